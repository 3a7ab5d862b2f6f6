"""The reference's PyTorch-to-TF/Flax "export and reload" workaround, as one command.

The reference's TF and Flax classes could not read a PyTorch composite checkpoint: users saved
the two halves, reloaded each with `from_pt=True`, and saved again. encdec reads every layout
directly; this script stays for people who need the reference's own `tf_model.h5` /
`flax_model.msgpack` files. It is a thin wrapper over `encdec.convert` (the `encdec-convert`
command):

    python tools/convert/convert.py ckpt/ ckpt-tf/ --to tf
"""

import sys

from encdec.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
