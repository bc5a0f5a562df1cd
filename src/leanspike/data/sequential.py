"""Sequential images: one image fed to the network a slice per time step.

A static image repeated at every step gives BPTT and spatial-only methods (SLTT) nearly
the same gradients, so it cannot show what cutting temporal routes costs. Fed row by row
(or in column strips), the class can only be read from the whole sequence, and the
network has to carry what it saw in earlier steps: a real temporal task built from
images that are on disk.

``mode="rows"``: step t shows rows ``t·w … t·w + w − 1`` (w = ``width``);
``mode="strips"``: step t shows columns ``t·w … t·w + w − 1``. T = side / w.
``layout="flat"`` gives samples ``[T, w·side]`` (for MLPs); ``layout="channels"`` gives
``[T, w, side]``: the w rows (or columns) as channels of a 1-D signal along the other
axis (for ``spiking_conv1d``). Strips are stored column by column (a column's pixels top
to bottom, then the next column).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

MODES = ("rows", "strips")
LAYOUTS = ("flat", "channels")


def check_sequence_options(mode: str, width: int, layout: str, size: tuple[int, int]) -> int:
    """Validate the options against the image ``size`` (H, W); return the number of steps T."""
    if mode not in MODES:
        raise ValueError(f"sequential images: mode {mode!r} unknown; expected one of {MODES}")
    if layout not in LAYOUTS:
        raise ValueError(f"sequential images: layout {layout!r} unknown; expected one of {LAYOUTS}")
    side = size[0] if mode == "rows" else size[1]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1 or side % width:
        raise ValueError(f"sequential images: width = {width!r}; expected an integer dividing the "
                         f"{'height' if mode == 'rows' else 'width'} {side}")
    return side // width


def image_to_sequence(images: torch.Tensor, mode: str = "rows", width: int = 1,
                      layout: str = "flat") -> torch.Tensor:
    """Images ``[N, 1, H, W]`` → sequences ``[N, T, F]`` (flat) or ``[N, T, w, L]`` (channels).

    Rows: ``seq[n, t, i, :] = image[n, 0, t·w + i, :]``; strips: ``seq[n, t, i, :] =
    image[n, 0, :, t·w + i]``. No pixel is copied twice or dropped.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images shaped {tuple(images.shape)}; expected [N, 1, H, W] (one channel)")
    n, _, h, w = images.shape
    steps = check_sequence_options(mode, width, layout, (h, w))
    if mode == "rows":
        seq = images.reshape(n, steps, width, w)
    else:
        seq = images.reshape(n, h, steps, width).permute(0, 2, 3, 1)
    return seq.reshape(n, steps, -1) if layout == "flat" else seq


class SequentialImages(Dataset):
    """uint8 images ``[N, 1, H, W]`` served as float sequences in [0, 1] (see module doc)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mode: str = "rows", width: int = 1,
                 layout: str = "flat") -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 [N, 1, H, W] with one label each")
        self.T = check_sequence_options(mode, width, layout, (images.shape[2], images.shape[3]))
        self.images, self.labels = images, labels.long()
        self.mode, self.width, self.layout = mode, width, layout

    def __len__(self) -> int:
        return len(self.images)

    def step_shape(self) -> tuple[int, ...]:
        """Shape of one time step of a sample."""
        side = self.images.shape[3] if self.mode == "rows" else self.images.shape[2]
        return (self.width * side,) if self.layout == "flat" else (self.width, side)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        seq = image_to_sequence(self.images[i:i + 1], self.mode, self.width, self.layout)[0]
        return seq.float().div_(255.0), int(self.labels[i])
