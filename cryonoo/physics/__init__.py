"""Image-formation physics: pure, batched, differentiable torch functions.

Everything follows cryoDRGN's conventions (odd lattice ``D = box + 1``, centered Hartley
transform, ``coords @ R`` rotations, CTF(0) = −w); each module's docstring states the conventions
it implements and ``tests/unit`` pins them.
"""
