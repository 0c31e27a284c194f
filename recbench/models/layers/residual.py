"""Deep Crossing's residual unit (Shan et al., KDD 2016, Sec. 3)."""

from __future__ import annotations

from torch import Tensor, nn

FORMS = ("post", "pre")


class ResidualUnit(nn.Module):
    """``ReLU(x + W2 ReLU(W1 x + b1) + b2)``: a two-layer block with an identity shortcut.

    Deep Crossing (Shan et al., KDD 2016, Sec. 3, eq. 1: ``X^O = F(X^I, {W, b}) + X^I``) takes
    its unit from He et al.'s residual networks (CVPR 2016) with the convolutions removed; in
    that unit the shortcut joins the second layer's *pre-activation* and the ReLU acts on the
    sum, ``ReLU(x + F(x))`` (``form="post"``, the default). Reading the paper's "two layers of
    ReLU, then add the input" literally gives ``x + ReLU(F(x))`` (``form="pre"``): there the
    residual is non-negative, so a unit can only push coordinates up, never down. He et al.
    tested exactly this "ReLU before addition" block (Identity Mappings, ECCV 2016, Fig. 4(c))
    and found it worse than the original, which is why ``post`` is the default.

    ``hidden`` is the inner width; input and output keep width ``dim`` so the shortcut needs no
    projection. (B, dim) → (B, dim).
    """

    def __init__(self, dim: int, hidden: int, form: str = "post") -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"residual form must be one of {FORMS}, got {form!r}")
        if hidden < 1:
            raise ValueError(f"a residual unit's inner width must be >= 1, got {hidden}")
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)
        self.post = form == "post"

    def forward(self, x: Tensor) -> Tensor:
        f = self.outer(self.inner(x).relu())  # F(x), before its activation
        return (x + f).relu() if self.post else x + f.relu()
