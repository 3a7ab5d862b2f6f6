"""Developer and user tools shipped with encdec: the checkpoint converter (`tools.convert`)."""
