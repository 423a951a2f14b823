"""The SAE trainer: TopK / BatchTopK, AuxK, unit-norm decoder rows, data-initialised b_dec, exact resume.

    trainer = Trainer(TrainConfig(k=(32,)), {"resid_post.15": 576}, out="runs/smollm2-l15")
    trainer.fit(cache.batches(4096, seed=0, start_batch=trainer.step))

``fit`` consumes ``dict[hookpoint, Tensor (batch, d_in)]`` (or plain tensors for a single hookpoint) and nothing else:
where activations come from is the caller's business. Several SAEs (hookpoints x widths x k) share each batch.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from qwenscope.errors import QwenscopeError
from qwenscope.sae.config import SaeConfig
from qwenscope.sae.model import Sae
from qwenscope.train import checkpoint, dist, kernels, precision
from qwenscope.train.config import TrainConfig
from qwenscope.train.report import MetricsReport, parse_report_to

logger = logging.getLogger(__name__)


@dataclass
class SaeState:
    """One SAE being trained, with its optimiser and dead-feature counter."""

    name: str
    hookpoint: str
    sae: Sae
    opt: torch.optim.Adam
    since_fired: Tensor
    """(d_sae,) tokens since each feature last fired."""
    bf16: bool = False
    """Choose the active features from a bf16 product (rescored exactly), see ``TrainConfig.encoder``."""
    last: dict[str, float] = field(default_factory=dict)


def _adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """torch's fused Adam where it exists (one pass over each tensor instead of a loop of per-op kernels)."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=1e-8, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, eps=1e-8)


def _bf16(cfg: TrainConfig, sae: Sae) -> bool:
    if cfg.encoder == "exact":
        return False
    if cfg.encoder == "auto":
        return precision.use_bf16(sae.device, sae.d_in, sae.d_sae)
    if not precision.hardware_bf16(sae.device):
        logger.warning("encoder=bf16 on %s, which has no native bf16 products: expect it to be much slower", sae.device)
    return True


def _copy_weights(sae: Sae, source: str, hookpoint: str) -> None:
    """Initialise ``sae`` from the trained SAE at ``source`` for ``hookpoint`` (same shape and k required)."""
    from qwenscope.sae.load import load_sae

    trained = load_sae(source, hookpoint=hookpoint, device=sae.device, dtype=sae.dtype)
    ours, theirs = sae.cfg, trained.cfg
    mine = (ours.d_in, ours.d_sae, ours.k, ours.activation, ours.apply_b_dec_to_input)
    if mine != (theirs.d_in, theirs.d_sae, theirs.k, theirs.activation, theirs.apply_b_dec_to_input):
        raise QwenscopeError(
            f"--init-from {source} holds a {theirs.activation} SAE of d_in {theirs.d_in}, d_sae {theirs.d_sae}, "
            f"k {theirs.k} at {hookpoint}; train with the same --expansion-factor, --k, --activation and "
            "--apply-b-dec-to-input"
        )
    with torch.no_grad():
        for name, value in trained.state_dict().items():
            sae.state_dict()[name].copy_(value)


class Trainer:
    """Trains one SAE per (hookpoint, expansion factor, k) on shared batches; checkpoints and resumes exactly."""

    def __init__(
        self,
        cfg: TrainConfig,
        d_in: Mapping[str, int],
        out: str | Path,
        *,
        model: str | None = None,
        device: str | torch.device = "cpu",
        resume: bool = True,
        report_to: str = "none",
    ) -> None:
        if not d_in:
            raise QwenscopeError("no hookpoints to train on")
        self.cfg, self.out, self.step = cfg, Path(out), 0
        self.report_to = report_to
        parse_report_to(report_to)  # an unknown or missing backend fails now, not after the first steps
        self.rank, self.world = dist.rank_and_world()
        self.ddp = self.world > 1 and not cfg.distribute_modules  # every rank trains every SAE on a batch slice
        shared = self.world == 1 or self.ddp
        self.ckpt_name = checkpoint.NAME if shared else f"{checkpoint.NAME}-rank{self.rank}"
        self.metrics_name = "metrics.jsonl" if shared else f"metrics-rank{self.rank}.jsonl"
        self.writes = not self.ddp or self.rank == 0  # under DDP rank 0 writes for everyone
        self.states: list[SaeState] = []
        self._buffers: dict[tuple, Tensor] = {}
        combos = [(e, k) for e in cfg.expansion_factor for k in cfg.k]
        hookpoints = sorted(d_in)
        if self.world > 1 and cfg.distribute_modules:
            if len(hookpoints) < self.world:
                raise QwenscopeError(
                    f"{len(hookpoints)} hookpoints cannot be shared by {self.world} ranks; "
                    "use fewer processes or data parallelism (no --distribute-modules)"
                )
            hookpoints = hookpoints[self.rank :: self.world]
        for hookpoint in hookpoints:
            width = d_in[hookpoint]
            for e, k in combos:
                name = hookpoint if len(combos) == 1 else f"{hookpoint}/x{e}_k{k}"
                sae_cfg = SaeConfig(
                    d_in=width,
                    d_sae=width * e,
                    k=k,
                    activation=cfg.activation,
                    apply_b_dec_to_input=cfg.apply_b_dec_to_input,
                    hookpoint=hookpoint,
                    model=model,
                )
                torch.manual_seed(cfg.seed + zlib.crc32(name.encode()))  # same init whichever rank builds it
                sae = Sae(sae_cfg, device=device)
                if cfg.init_from is not None:
                    _copy_weights(sae, cfg.init_from, hookpoint)
                opt = _adam(list(sae.parameters()), cfg.lr_for(sae.d_sae))
                since = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
                self.states.append(SaeState(name, hookpoint, sae, opt, since, _bf16(cfg, sae)))
        if resume and checkpoint.exists(self.out, self.ckpt_name):
            self.step = checkpoint.load(self)
            logger.info("resumed %s at step %d", self.out, self.step)

    @property
    def saes(self) -> dict[str, Sae]:
        return {s.name: s.sae for s in self.states}

    # ------------------------------------------------------------------ one step
    def _inputs(self, batch: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        if isinstance(batch, Tensor):
            hookpoints = {s.hookpoint for s in self.states}
            if len(hookpoints) != 1:
                raise QwenscopeError("a plain tensor batch is ambiguous with several hookpoints; pass a dict")
            batch = {hookpoints.pop(): batch}
        for s in self.states:
            x = batch.get(s.hookpoint)
            if x is None:
                raise QwenscopeError(f"the batch has no activations for {s.hookpoint}; it has {sorted(batch)}")
            if x.ndim != 2 or x.shape[1] != s.sae.d_in:
                raise QwenscopeError(
                    f"activations for {s.hookpoint} have shape {tuple(x.shape)}, expected "
                    f"(batch, {s.sae.d_in}); is the cache of another model or hookpoint?"
                )
        if not self.ddp:
            return dict(batch)
        n = next(iter(batch.values())).shape[0]
        if n % self.world:
            raise QwenscopeError(f"batch size {n} is not divisible by {self.world} ranks; pick a multiple")
        per = n // self.world
        return {hp: x[self.rank * per : (self.rank + 1) * per] for hp, x in batch.items()}

    def _sae_step(self, s: SaeState, x: Tensor, lr_scale: float) -> None:
        cfg, sae = self.cfg, s.sae
        x = x.to(device=sae.device, dtype=sae.dtype)
        if not torch.isfinite(x).all():
            raise QwenscopeError(
                f"activations for {s.hookpoint} contain NaN or inf at step {self.step}; "
                "filter them or rebuild the cache"
            )
        n, k, ddp = x.shape[0], sae.cfg.k or 1, self.ddp
        n_all = n * self.world if ddp else n
        mean = dist.all_sum(x.sum(0), ddp) / n_all
        total_var = dist.all_sum((x - mean).pow(2).sum(), ddp)  # over the whole batch, all ranks
        if self.step == 0 and cfg.init_from is None:  # b_dec starts at the data mean: the encoder sees centred inputs
            with torch.no_grad():
                sae.b_dec.copy_(mean)
        dead = s.since_fired > cfg.dead_tokens
        num_dead = int(dead.sum())
        k_aux = min(sae.d_in // 2, num_dead) if cfg.auxk_alpha > 0 else 0
        with torch.no_grad():
            main, aux = self._codes(s, x, k, dead, k_aux)
            aux_scale = min(num_dead / (sae.d_in // 2), 1.0)  # AuxK grows with the number of dead features
            step = kernels.loss_and_grads(
                x,
                sae.W_enc,
                sae.b_dec,
                sae.W_dec,
                main,
                total_var,
                aux=aux,
                aux_weight=cfg.auxk_alpha * aux_scale,
                b_dec_in_input=sae.cfg.apply_b_dec_to_input,
            )
            for p, g in zip((sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), step.grads):
                p.grad = dist.all_sum(g, ddp)  # each rank's loss is its share of the global one: the sum is the global
            for group in s.opt.param_groups:  # gradient (the W_dec projection is linear: it commutes with the sum)
                group["lr"] = cfg.lr_for(sae.d_sae) * lr_scale
            s.opt.step()
            s.opt.zero_grad(set_to_none=True)
            W = sae.W_dec
            W.div_(W.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            fired = torch.zeros(sae.d_sae, dtype=torch.uint8, device=sae.device)
            fired[main.cols[main.vals > 0]] = 1
            dist.all_max(fired, ddp)
            s.since_fired += n_all
            s.since_fired[fired.bool()] = 0
            auxk = aux_scale * step.auxk
            stats = dist.all_sum(torch.stack([step.fvu + cfg.auxk_alpha * auxk, step.fvu, auxk]), ddp)
        s.last = {
            "loss": stats[0].item(),
            "fvu": stats[1].item(),
            "auxk": stats[2].item(),
            "l0": float((main.vals > 0).sum()) / n,
            "dead": num_dead / sae.d_sae,
            "lr": cfg.lr_for(sae.d_sae) * lr_scale,
        }

    def _codes(
        self, s: SaeState, x: Tensor, k: int, dead: Tensor, k_aux: int
    ) -> tuple[kernels.SparseCode, kernels.SparseCode | kernels.DeadCode | None]:
        """The main TopK / BatchTopK code and, when k_aux > 0, the AuxK code of the dead features."""
        sae, activation = s.sae, self.cfg.activation
        b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else None  # subtracted inside the kernels
        shape = (x.shape[0], sae.d_sae)
        pre = None
        if s.bf16:
            approx = kernels.lowp_pre_acts(
                x, sae.W_enc, sae.b_enc, b_dec, torch.bfloat16, out=self._buffer(shape, torch.bfloat16, x.device)
            )
            main = kernels.candidate_code(approx, x, sae.W_enc, sae.b_enc, b_dec, k, activation)
        else:
            pre = kernels.pre_acts(x, sae.W_enc, sae.b_enc, b_dec, out=self._buffer(shape, x.dtype, x.device))
            main = kernels.topk_code(pre, k) if activation == "topk" else kernels.batch_topk_code(pre, k)
        if k_aux == 0:
            return main, None
        ids = dead.nonzero().squeeze(1)
        if pre is not None:
            sub = pre.index_select(1, ids)
        else:  # exact values of the dead features only
            sub = kernels.pre_acts(x, sae.W_enc.index_select(1, ids), sae.b_enc[ids], b_dec)
        return main, kernels.dead_topk_code(sub, ids, k_aux)

    def _buffer(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """The (batch, d_sae) pre-activation buffer, shared by SAEs of one width and reused from step to step."""
        key = (shape, dtype, device)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def train_step(self, batch: Tensor | Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        inputs = self._inputs(batch)
        scale = self.cfg.lr_scale(self.step)
        for s in self.states:
            self._sae_step(s, inputs[s.hookpoint], scale)
        self.step += 1
        return {s.name: s.last for s in self.states}

    # ------------------------------------------------------------------ the loop
    def fit(self, batches: Iterable[Tensor | Mapping[str, Tensor]]) -> dict[str, Sae]:
        """Train until ``cfg.steps``; checkpoint every ``save_every`` steps; write the SAEs to ``out``."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        log = MetricsReport(self.out, self.metrics_name, self.report_to, asdict(cfg)) if self.writes else None
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True, disable=self.rank != 0
        )
        try:
            for batch in batches:
                if self.step >= cfg.steps:
                    break
                metrics = self.train_step(batch)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    first = next(iter(metrics.values()))
                    bar.set_postfix(fvu=f"{first['fvu']:.3f}", l0=f"{first['l0']:.1f}", dead=f"{first['dead']:.1%}")
                    if log is not None:
                        log.log(self.step, self.step * cfg.batch_size, metrics)
                if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self._checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        if self.step < cfg.steps:
            self._checkpoint()  # nothing is lost: more data can continue from here
            raise QwenscopeError(
                f"the data ran out after {self.step} of {cfg.steps} steps; use more data, more epochs, or fewer --steps"
            )
        self._checkpoint()
        if self.writes:
            for s in self.states:
                s.sae.save(self.out / s.name)
            logger.info("saved %d SAE(s) to %s", len(self.states), self.out)
        dist.barrier(self.ddp)
        return self.saes

    def _checkpoint(self) -> None:
        if self.writes:
            checkpoint.save(self)
        dist.barrier(self.ddp)
