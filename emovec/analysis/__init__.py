"""Research tools beside the core: they use it (extraction, vectors, steering), it never uses
them. The method's studies of emotion:

- :mod:`~emovec.analysis.decode`: EmotionDecode, directions read through the LM head;
- :mod:`~emovec.analysis.stimuli`, :mod:`~emovec.analysis.tasks`,
  :mod:`~emovec.analysis.experiment`: EmotionPrompt / EmotionAttack stimuli, stimulus
  vectors, and the stimulus experiment on a labelled task set;
- :mod:`~emovec.analysis.importance`: which words matter (gradient norm, deletion);
- :mod:`~emovec.analysis.readout`, :mod:`~emovec.analysis.classifier`: emotion read out of
  hidden states, and recognition from it.

Import the module you need (``from emovec.analysis.decode import decode``); this package
imports none of them, so ``import emovec.analysis`` stays cheap.
"""
