"""The training machinery, each module one piece of the one loop:

* ``step``: the train state, what is trained (``Objective``), the data (``Stream``), one
  outer step (``make_step``);
* ``placement``: where the steps run, seeds in one program and data-parallel devices;
* ``checkpoints``: orbax saves, the save action, resuming;
* ``stopping``: signals and divergence;
* ``curves``: the JSON Lines records;
* ``train``: the loop (``train``, ``train_seeds``) that composes them;
* ``parallel`` (device meshes, collectives), ``tbptt`` (truncated BPTT) and ``data``.
"""
