"""Research tools beside the core: they use it (extraction, vectors, steering), it never uses
them. The home of the method's studies of emotion: decoding directions through the LM head,
emotional stimuli in prompts, word importance, and read-out of emotion from hidden states.
"""
