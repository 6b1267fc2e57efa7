"""What every latent-variable model decoding a volume shares: lattice, loss mask, CTF, rendering.

:class:`LatticeModel` holds the odd-lattice geometry (cryoDRGN's conventions, see
:mod:`cryonoo.models.vae`) and the implicit decoder; :class:`~cryonoo.models.vae.HetVAE` adds an
encoder, :class:`~cryonoo.models.autodecoder.AutoDecoder` a table of per-image latents.

* Loss mask: the disk of radius ``D // 2`` lattice pixels (|k| ≤ 0.5 cycles/px) without DC,
  ``n_pix`` points. The *work set* is the loss mask, or its union with a model's extra mask (the
  VAE's encoder mask); it is point symmetric, so translations act on it.
* ``_prepare`` translates observed images by ``+trans`` pixels and evaluates the CTF on the work
  set; ``_decode`` evaluates the decoder at ``coords[loss mask] @ R`` times the CTF.
* Memory: with ``decoder_chunk = n`` a decoding that needs gradients runs ``n`` images at a
  time and keeps none of the decoder's activations; the backward pass recomputes them chunk by
  chunk (:func:`torch.utils.checkpoint.checkpoint`). The decoder's working memory is then that
  of ``n`` images whatever the batch, for one more decoder forward pass per step; the values
  and gradients are those of the whole batch at once, to rounding.
* Cache blocking: on the CPU a decoding runs ``max(1, cpu_block_points // N)`` images at a
  time (``N`` points per image), so each group's activations are reused from the cache by the
  next layer and, in the backward pass, by the same group's gradients; the autograd engine
  finishes one group's backward before the next. Same values and gradients as one pass, to
  rounding (the weight gradients are summed over groups); 4–14 % less time per fp32 step with
  8 192 points on one CPU thread, 6–9 % less time per fp32 training epoch end to end
  (docs/benchmarks.md). The model's own default is off (None); training sets
  ``optim.cpu_block_points`` (8 192 by default).
* Geometry (coordinates, masks, rotations, CTF, phases) runs in float32 with autocast disabled.
* Test-time fitting of latents (:meth:`LatticeModel.refine_latents`, :mod:`cryonoo.models.refine`)
  is shared: each model supplies only its per-image :meth:`~LatticeModel.latent_prior`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cryonoo.models import refine
from cryonoo.models.decoders import DECODERS
from cryonoo.models.encoders import check_int
from cryonoo.physics.ctf import ctf_from_params
from cryonoo.physics.lattice import (
    check_band,
    check_odd_lattice,
    circular_mask,
    lattice_coords,
)
from cryonoo.physics.shifts import shift_ht_points

__all__ = ["CPU_BLOCK_POINTS", "LatticeModel"]

#: decoder points per cache block on the CPU that training uses by default
#: (``optim.cpu_block_points``): 8 MB of float32 activations per layer at width 256
CPU_BLOCK_POINTS = 8192


class LatticeModel(nn.Module):
    """Lattice geometry, decoder and rendering shared by the reconstruction models.

    Parameters
    ----------
    D:
        Odd lattice size (``box + 1``).
    zdim:
        Latent width.
    extra_mask:
        ``(D·D,)`` bool mask joined to the loss mask to form the work set (``None``: loss mask).
    """

    def __init__(self, D: int, zdim: int, extra_mask: Tensor | None = None) -> None:
        super().__init__()
        self.D = check_odd_lattice(D)
        self.zdim = check_int(zdim, "zdim", 1)
        loss_mask = circular_mask(D, D // 2)
        work = loss_mask if extra_mask is None else loss_mask | extra_mask
        coords = lattice_coords(D)
        self.n_pix = int(loss_mask.sum())
        self._buffer("_work_idx", work.nonzero()[:, 0])
        self._buffer("_freqs_w", coords[work, :2])
        self._buffer("_loss_pos", loss_mask[work].nonzero()[:, 0])
        self._buffer("_loss_idx", loss_mask.nonzero()[:, 0])
        self._buffer("_coords2", coords[loss_mask, :2])  # (Npix, 2); z = 0 on the lattice
        self.check_finite = True  # one device sync per step to name a non-finite term
        #: images per recomputed decoder chunk when gradients are needed (None: one pass that
        #: keeps every activation for the backward pass); see the module docstring
        self.decoder_chunk: int | None = None
        #: on the CPU, decoder points per cache block (None: the whole batch at once); see
        #: the module docstring
        self.cpu_block_points: int | None = None

    def _buffer(self, name: str, value: Tensor) -> None:
        self.register_buffer(name, value, persistent=False)

    def _build_decoder(self, decoder: str | nn.Module, **kwargs: Any) -> None:
        """Set ``self.decoder`` from ``DECODERS`` (or a built module) and check its ``zdim``."""
        self.decoder = DECODERS.build_accepted(decoder, D=self.D, zdim=self.zdim, **kwargs)
        if getattr(self.decoder, "zdim", self.zdim) != self.zdim:
            raise ValueError(
                f"decoder: built for zdim={self.decoder.zdim}, the model has {self.zdim}"
            )

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: Tensor) -> int:
        if not isinstance(images, Tensor) or images.ndim != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be (B, D, D) Hartley images, got {shape}")
        d = images.shape[-1]
        if tuple(images.shape[1:]) != (self.D, self.D):
            raise ValueError(
                f"images: the model was built for D={self.D} ({self.D - 1}-px images); got "
                f"images of shape {tuple(images.shape)} (D={d}); build the model with D={d} "
                f"or resample the particles to {self.D - 1} px"
            )
        return images.shape[0]

    @staticmethod
    def _check(x: Tensor | None, name: str, shape: tuple[int, ...], hint: str) -> None:
        if x is not None and (not isinstance(x, Tensor) or tuple(x.shape) != shape):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape {shape} ({hint}), got {got}")

    def _check_z(self, z: Tensor) -> int:
        if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[1] != self.zdim:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (B, {self.zdim}) (zdim={self.zdim}), got {got}")
        return z.shape[0]

    # ------------------------------------------------------------- pipeline
    def _autocast_off(self) -> torch.autocast:
        return torch.autocast(device_type=self._freqs_w.device.type, enabled=False)

    def _prepare(
        self, images: Tensor, ctf: Tensor | None, trans: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """→ translated values on the work set ``(B, Nw)`` and the CTF there (or ``None``)."""
        b = self._check_images(images)
        self._check(ctf, "ctf", (b, 8), "[Apix, dfu, dfv, dfang, kV, cs, w, phase] per image")
        self._check(trans, "trans", (b, 2), "shifts (tx, ty) in pixels per image")
        with self._autocast_off():
            y = images.reshape(b, -1).float().index_select(1, self._work_idx)
            if trans is not None:
                y = shift_ht_points(y, self._freqs_w, trans.float(), validate=False)
            c = None
            if ctf is not None:
                c = ctf_from_params(self._freqs_w, ctf.float(), validate=False)
        return y, c

    def _loss_targets(
        self, images: Tensor, ctf: Tensor | None, trans: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """→ translated values and the CTF (or ``None``) at the loss-mask points, ``(B, Npix)``."""
        y, c = self._prepare(images, ctf, trans)
        y = y.index_select(1, self._loss_pos)
        return y, None if c is None else c.index_select(1, self._loss_pos)

    def _slice_coords(self, rot: Tensor, coords2: Tensor | None = None) -> Tensor:
        """``(B, N, 3)`` frequencies of the central slices at ``rot`` of the loss-mask points
        (or of ``coords2`` ``(N, 2)``, a raster-ordered subset of them)."""
        points = self._coords2 if coords2 is None else coords2
        with self._autocast_off():  # (N, 2) @ (B, 2, 3): z = 0, so only R's first rows
            return torch.einsum("nj,bjk->bnk", points, rot[:, :2].float())

    def _decode(
        self, z: Tensor, rot: Tensor, c: Tensor | None, coords2: Tensor | None = None
    ) -> Tensor:
        """``(B, N)`` CTF-modulated decoded values at the loss-mask points (or ``coords2``)."""
        chunk = self.decoder_chunk
        if chunk is None or z.shape[0] <= chunk or not torch.is_grad_enabled():
            pred = self._decode_blocked(z, rot, coords2)
        else:  # keep only each chunk's output; the backward pass recomputes its activations
            pred = torch.cat(
                [
                    checkpoint(self._decode_values, zc, rc, coords2, use_reentrant=False)
                    for zc, rc in zip(z.split(chunk), rot.split(chunk), strict=True)
                ]
            )
        return pred if c is None else pred * c

    def _decode_blocked(self, z: Tensor, rot: Tensor, coords2: Tensor | None) -> Tensor:
        """:meth:`_decode_values`, on the CPU a group of images at a time: each group's
        activations (about ``cpu_block_points`` decoder points) stay in the cache from one
        layer to the next, in the forward and the backward pass."""
        block = self.cpu_block_points
        points = (self._coords2 if coords2 is None else coords2).shape[0]
        group = max(1, block // points) if block else z.shape[0]
        if z.device.type != "cpu" or z.shape[0] <= group:
            return self._decode_values(z, rot, coords2)
        parts = zip(z.split(group), rot.split(group), strict=True)
        return torch.cat([self._decode_values(zc, rc, coords2) for zc, rc in parts])

    def _decode_values(self, z: Tensor, rot: Tensor, coords2: Tensor | None) -> Tensor:
        """``(B, N)`` float32 decoded values (no CTF) at the central slices at ``rot``."""
        return self.decoder(self._slice_coords(rot, coords2), z, validate=False).float()

    def _band_positions(self, band: float) -> Tensor:
        """Positions among the loss-mask points with ``|k| ≤ band`` cycles/pixel (a disk: still
        point symmetric and in raster order, as the Hermitian decoder needs)."""
        radius = check_band(band)
        return (self._coords2.pow(2).sum(1) <= radius**2).nonzero()[:, 0]

    def _to_image(self, values: Tensor) -> Tensor:
        out = values.new_zeros(values.shape[0], self.D * self.D)
        return out.index_copy(1, self._loss_idx, values).reshape(-1, self.D, self.D)

    # ------------------------------------------------------------- protocol
    def render(
        self, z: Tensor, rot: Tensor, ctf: Tensor | None = None, *, band: float | None = None
    ) -> Tensor:
        """``(B, zdim)``, ``(B, 3, 3)``, ``(B, 8)|None`` → ``(B, D, D)`` CTF-modulated decoded
        Hartley images, zero outside the loss mask.

        ``band`` (cycles/pixel, in ``(0, 0.5]``) decodes only the points with ``|k| ≤ band``
        and leaves the rest zero: a low-pass rendering for about ``(2·band)²`` of the work.
        """
        b = self._check_z(z)
        self._check(rot, "rot", (b, 3, 3), "one rotation matrix per latent")
        self._check(ctf, "ctf", (b, 8), "[Apix, dfu, dfv, dfang, kV, cs, w, phase] per latent")
        pos = None if band is None else self._band_positions(band)
        coords2 = self._coords2 if pos is None else self._coords2[pos]
        c = None
        if ctf is not None:
            with self._autocast_off():
                c = ctf_from_params(coords2, ctf.float(), validate=False)
        values = self._decode(z, rot, c, coords2)
        if pos is not None:
            values = values.new_zeros(b, self.n_pix).index_copy(1, pos, values)
        return self._to_image(values)

    def latent_prior(self, z: Tensor) -> Tensor:
        """``(B,)`` float32 prior term of point latents ``z`` ``(B, zdim)`` in test-time fitting,
        in units of the per-pixel MSE; here none (zeros): subclasses give their training prior."""
        return z.new_zeros(z.shape[0], dtype=torch.float32)

    def refine_latents(
        self,
        images: Tensor,
        rot: Tensor,
        ctf: Tensor | None = None,
        trans: Tensor | None = None,
        *,
        z0: Tensor,
        steps: int,
        lr: float,
        band: float | None = None,
        on_step: refine.OnStep | None = None,
    ) -> Tensor:
        """``(B, zdim)`` latents fitted from ``z0`` against the frozen decoder by ``steps`` Adam
        steps at learning rate ``lr`` (``band``: on the frequencies ``|k| ≤ band`` only):
        :func:`cryonoo.models.refine.fit_latents` (shapes there)."""
        return refine.fit_latents(
            self, images, rot, ctf, trans, z0=z0, steps=steps, lr=lr, band=band, on_step=on_step
        )

    def volume(self, z: Tensor | None, norm_std: float = 1.0) -> Tensor:
        """Real-space ``(box, box, box)`` map ``[z, y, x]`` for one latent ``(zdim,)``."""
        if isinstance(z, Tensor) and z.shape[-1] != self.zdim:
            raise ValueError(f"z must have shape ({self.zdim},) (zdim), got {tuple(z.shape)}")
        return self.decoder.volume(z, self.D, norm_std)
