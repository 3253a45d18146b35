"""patchsweep.stores: the file formats (capture and results stores) and the shared vocabulary.

This package never imports MLX, so stores can be read and analysed on any machine.
"""
