"""SmoothQuant for dynamic int8: move activation outliers into the weights before quantizing them.

Dynamic quantization (``workers/runtime/int8_linear.py``) gives each Linear's input ONE uint8 scale, set by its
range; a few input
channels of a transformer carry values 10-100x the others, so the rest lose most of their digits. SmoothQuant
(Xiao et al., 2023) divides input channel j by ``s_j = max|x_j| ** alpha / max|W[:, j]| ** (1 - alpha)`` and
multiplies column j of the weight by the same ``s_j``: the product is unchanged in exact arithmetic, but the
activations become flat enough for one scale. ``max|x_j|`` is measured once, when the model loads, by running
the float32 model on ``calibration_texts()`` (a fixed, multilingual set of passages of 1 to 32 sentences:
prose, code, logs, numbers).

The first transformer layer stays float32. Mean cosine to float32 MiniLM on 120 mixed test texts, smoothed (alpha
0.8) with the first layer in float32 (the default): 0.9969 (min 0.978) with ``Int8Linear``; 0.9919 (min 0.954)
with the ``torch.ao`` dynamic quantization it replaced. bench/precision.py measures speed and fidelity.
EMBEDQ_INT8_SMOOTHING sets alpha; 0 turns smoothing off (plain dynamic int8 of every Linear).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

# Linears of the first transformer layer (Hugging Face names: encoder.layer.0., layers.0.) stay float32: their
# error passes through every later layer (the ONNX backend keeps the same layer in float32 for the same reason).
_FIRST_LAYER = re.compile(r"\blayers?\.0\.")

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Interest rates rose for the third quarter in a row, cooling the housing market.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "Please restart the worker after changing the model directory.",
    "What is the capital of Australia, and why is it not Sydney?",
    "def mean(xs): return sum(xs) / len(xs)  # fails on an empty list",
    "The treaty was signed in 1648 after thirty years of war.",
    "Der Zug nach München hatte wegen eines Signalfehlers vierzig Minuten Verspätung.",
    "Le musée ouvre à neuf heures, mais le café d'à côté ouvre à sept heures.",
    "El médico recomendó caminar treinta minutos al día y dormir más.",
    "Покупатели вернули товар, потому что инструкция была только на английском.",
    "机器学习模型需要大量标注数据才能达到较高的准确率。",
    "東京の桜は三月の終わりに満開になることが多い。",
    "Error 504: the upstream server did not answer within 30 seconds (request id 7f3a9c).",
    "Glaciers carve U-shaped valleys as they slowly grind down the mountains.",
    "Mix two cups of flour, a pinch of salt and one egg; rest the dough for an hour.",
    "Q3 revenue: $4.2M (+12% YoY), churn 3.1%, net retention 118%.",
    "She tuned the violin twice before the concert began, then forgot the second movement.",
    "Tokenizers split rare words such as 'antidisestablishmentarianism' into several pieces.",
    "Children played football in the square until the streetlights came on.",
    "Return a new list containing all items from the iterable in ascending order.",
    "If the timeout argument is omitted or None, the call blocks until the operation completes.",
    "Raise ValueError if the string is not a valid identifier; see also str.isidentifier().",
    "for i, row in enumerate(rows):\n    if not row:\n        continue\n    total += float(row[2])",
    "SELECT name, count(*) FROM jobs WHERE status = 'failed' GROUP BY name ORDER BY 2 DESC LIMIT 10;",
    "The HTTP/1.1 spec allows a proxy to close an idle keep-alive connection at any time.",
    "Patients in the treatment group (n = 412) showed a 23% reduction in systolic blood pressure.",
    "The lease may be terminated by either party with ninety (90) days' written notice.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped onto the surface six hours later.",
    "Install with `pip install embedq[onnx]`, then set EMBEDQ_MODEL_BACKEND=onnx.",
    "The mitochondrion is the site of oxidative phosphorylation in eukaryotic cells.",
    "Breaking: heavy snow closes highways across the region; schools will stay shut on Monday.",
    "I loved the first season, but the ending felt rushed and the villain made no sense at all!!",
    "Amortized over n insertions, appending to a dynamic array costs O(1) per element.",
    "Bitte senden Sie uns die unterschriebenen Unterlagen bis spätestens Freitag zurück.",
    "Nous avons reçu votre demande et un conseiller vous répondra dans les 48 heures.",
    "La reunión se pospuso porque la mitad del equipo estaba de vacaciones.",
    "用户反馈说，新版本的搜索结果比旧版本更准确，但速度稍慢。",
    "この関数は入力が空の場合に例外を送出します。",
    "2024-03-15T09:30:00Z INFO worker-3 task=embed.batch rows=256 took=1.84s",
)


def calibration_texts() -> list[str]:
    """Return the calibration passages: every sentence alone, then runs of 2 to 32 sentences in two orders.

    Volume and variety both matter: outlier channels show their full size only on some inputs (on MiniLM,
    45 passages gave mean cosine 0.981 to float32, 245 passages 0.992).
    """
    n = len(_SENTENCES)
    orders = [list(range(n)), [(7 * i + 3) % n for i in range(n)]]  # 7 is coprime with n: a second order
    texts = list(_SENTENCES)
    for order in orders:
        for size in (2, 4, 8, 16, 32):
            for start in range(0, n, 4):
                texts.append(" ".join(_SENTENCES[order[(start + k) % n]] for k in range(size)))
    return texts


def input_absmax(model: torch.nn.Module, run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Return, per Linear of ``model`` (by module name), the largest |input| seen per input channel during ``run``."""
    maxima: dict[str, torch.Tensor] = {}
    hooks = []

    def watch(name: str) -> Callable[..., None]:
        def hook(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...], __: torch.Tensor) -> None:
            x = inputs[0].detach()
            seen = x.abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            maxima[name] = torch.maximum(maxima[name], seen) if name in maxima else seen

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(watch(name)))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def smoothing_scale(absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """Return SmoothQuant's per-input-channel ``s`` for a Linear's ``weight`` [out, in] and its inputs' ``absmax``."""
    weight_max = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (absmax.clamp(min=1e-5) ** alpha) / (weight_max ** (1 - alpha))


def smooth_weights(model: torch.nn.Module, absmax: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Multiply each Linear that ``absmax`` measured, but the first layer's, by ``s`` per input channel, in place;
    return each one's ``1 / s``, by module name, which its input must be multiplied by from now on."""
    inverse_scales: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, seen in absmax.items():
            if not _FIRST_LAYER.search(name):
                linear = model.get_submodule(name)
                scale = smoothing_scale(seen, linear.weight, alpha)
                linear.weight.mul_(scale[None, :])
                inverse_scales[name] = 1.0 / scale
    return inverse_scales


def quantize_smoothed(model: torch.nn.Module, absmax: dict[str, torch.Tensor], alpha: float) -> torch.nn.Module:
    """Replace each Linear that ``absmax`` measured, but the first layer's, by an Int8Linear of ``W * s`` fed ``x / s``.

    In place (``model`` is an Encoder's private float32 copy); returns ``model``.
    """
    from workers.runtime.int8_linear import quantize_linears

    inverse_scales = smooth_weights(model, absmax, alpha)
    return quantize_linears(model, inverse_scales, inverse_scales)
