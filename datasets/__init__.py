"""Scene loaders: plain arguments in, a :class:`datasets.scene.Scene` out."""
