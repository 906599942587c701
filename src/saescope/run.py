"""`saescope run`: every stage on one model, each reused only while the options that produced it are unchanged.

The run config nests the stage configs themselves (capture, train, collate, interp, view options), so every
stage option is reachable from `run` under the stage's own name (`--width`, `--k`; names that two stages share
are prefixed: `--capture.max_tokens`, `--collate.max_tokens`, `--train.batch_size`, ...). What the stages get
from the run (model, corpus, output folders, the studied layer) is declared here once. Stage reuse: see
`saescope.stages`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from saescope.capture.config import CaptureOptions
from saescope.collate.config import CollateOptions, CollateResult
from saescope.config import ModelConfig, resolve_layer
from saescope.corpus import CorpusConfig
from saescope.interp.config import InterpOptions
from saescope.models.hookpoints import canonical_hookpoint
from saescope.stages import Stage
from saescope.train.config import TrainerConfig, TranscoderRunOptions
from saescope.viewer.config import ViewOptions

if TYPE_CHECKING:  # pragma: no cover
    from saescope.store import ActivationStore
    from saescope.train.config import TrainResult

log = logging.getLogger(__name__)

# Options that change how fast or where a stage runs, never what it writes: left out of stage fingerprints.
NOT_OUTPUT = {"checkpoint_every", "concurrency", "timeout", "retries", "api_key_env"}


@dataclass
class RunConfig:
    """Run the whole pipeline: seed dataset, corpus capture, SAE, collated records, explanations (then the viewer)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: CorpusConfig = field(default_factory=lambda: CorpusConfig(shuffle_docs=4096))
    # Contexts of excerpt_len + 1 tokens (BOS + 64): the store's contexts are then the collation's excerpts, and
    # the MLP neurons and every SAE's latents are collated from the store without running the model again.
    capture: CaptureOptions = field(default_factory=lambda: CaptureOptions(max_tokens=200_000, context_len=65))
    # 256-token batches (and two passes for the residual SAE, --resid_epochs): the store holds 200k tokens, and with
    # the residual SAE's input weights these took its ΔCE from 0.62 (1,024-token batches, one pass) to 0.28, then
    # 0.22 nats (docs/metrics.md, "The loss an SAE adds"); --train.batch_size 1024 --resid_epochs 0 is the old recipe
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(batch_size=256))
    transcoders: TranscoderRunOptions = field(default_factory=TranscoderRunOptions)
    # the studied layer's units on the store's first 65,536 tokens (the others on --whole_model_tokens): collation
    # cost grows with units x tokens, and the run's 15-minute budget on two cores sets it
    collate: CollateOptions = field(default_factory=lambda: CollateOptions(max_tokens=65_536, store_tokens=65_536))
    interp: InterpOptions = field(default_factory=InterpOptions)
    view: ViewOptions = field(default_factory=ViewOptions)
    out: str = "runs/default"
    """Output directory; a re-run reuses every stage whose options (and inputs) are unchanged."""
    layer: int = -1
    """Layer to study (-1 = the middle layer)."""
    generate: int = 50
    """Tokens generated per seed prompt (the seed activation dataset)."""
    saes: str = "resid_post,mlp_post_act,mlp_out,attn_out"
    """Hookpoint kinds at the studied layer that get an SAE (TDB names such as resid_delta_attn work too)."""
    collate_layers: str = "*"
    """Layers whose MLP neurons and heads are collated besides the studied one: '*' (every layer), comma-separated
    numbers, or '' (the studied layer only). The transcoders' latents are collated on every layer they cover."""
    whole_model_tokens: int = 16_384
    """Tokens collated for those layers and the transcoder latents (a full-model pass over the corpus's first
    contexts, which are the store's first ones); the studied layer's units read the store as before."""
    resid_epochs: float = 3.0
    """Passes over the store for residual-stream SAEs (resid_post/resid_pre), which the model's later norms amplify
    most (docs/metrics.md); the other SAEs, which add 0.03-0.04 nats after one pass, take --train.epochs (0 =
    --train.epochs for every SAE)."""
    resid_arch: str = "batchtopk"
    """Architecture of residual-stream SAEs ('' = --train.arch): at the same mean L0 (k = 32) BatchTopK's ΔCE on
    resid_post.9 was 0.295 against TopK's 0.353 nats, and 0.271 with a third pass (docs/metrics.md)."""
    resid_encoder: str = "lista"
    """Encoder of residual-stream SAEs ('' = --train.encoder): LISTA took ΔCE on resid_post.9 from 0.330 ± 0.009 to
    0.237 ± 0.007 nats on 400 unseen-article contexts for 1.5x the training time (docs/metrics.md); such an SAE
    loads in saescope only (SAELens refuses it): `linear` for one SAELens loads."""
    eval_contexts: int = 400
    """Most contexts for each SAE's spliced ΔCE/KL, drawn from the corpus's contexts after the store's (`saescope
    eval --spliced_from corpus`: unseen articles): each SAE stops once its ΔCE's standard error is below 0.01 nats
    (after 32 contexts; `saescope eval --target_se`), or at --eval_seconds."""
    eval_seconds: float = 150.0
    """Wall-time cap of the spliced evaluation once every SAE has its 32 contexts (`saescope eval --max_seconds`;
    0 = none). The MLP and attention SAEs reach SE < 0.01 within 32 contexts; the residual SAE (per-context SD
    ~0.14 nats across articles) needs ~200, about 140 s of spliced passes on a 2-core EPYC without AVX-512, paid
    for by the faster BatchTopK selection (docs/metrics.md); the cap stops a slower machine, and the summary then
    reports the standard error reached."""
    no_serve: bool = False
    """Do not serve the viewer at the end (it is only served when run from a terminal anyway)."""

    def __post_init__(self) -> None:
        from saescope import validate

        validate.not_a_file(self.out, "--out")
        validate.at_least(self.layer, -1, "--layer", "-1 = the middle layer")
        validate.at_least(self.generate, 1, "--generate")
        validate.at_least(self.eval_contexts, 1, "--eval_contexts")
        validate.at_least(self.resid_epochs, 0, "--resid_epochs", "0 = --train.epochs for every SAE")
        if self.resid_arch:
            from typing import get_args

            from saescope.train.config import Arch

            validate.one_of(self.resid_arch, get_args(Arch), "--resid_arch")
        if self.resid_encoder:
            validate.one_of(self.resid_encoder, ("linear", "lista"), "--resid_encoder")
        validate.at_least(self.eval_seconds, 0, "--eval_seconds", "0 = no cap")
        if not [s for s in self.saes.split(",") if s.strip()]:
            from saescope.errors import SaescopeError

            raise SaescopeError("--saes: name at least one hookpoint kind, e.g. resid_post")


class RunResult(NamedTuple):
    done: list[tuple[str, Path]]
    """(what, where) per stage, for the report."""
    col_root: Path
    """The collated data root (what the viewer serves)."""
    decisions: dict[str, str]
    """Stage name → reuse, resume, new or changed."""


def replacement_headline(ev: dict[str, Any]) -> str:
    """One line of a transcoder set's eval.json: each layer's reconstruction, then the replacement model."""
    se = f" ± {ev['delta_ce_se']:.2f}" if "delta_ce_se" in ev else ""  # eval.json files before it had one
    return (f"mean FVU {ev['fvu']:.3f}, L0 {ev['l0']:.1f}, dead {ev['dead_fraction']:.1%}; every MLP replaced: "
            f"ΔCE {ev['delta_ce']:.2f}{se} nats, KL {ev['kl_replaced']:.2f}, top-1 agreement "
            f"{ev['top1_agreement_replaced']:.0%}; with error terms: ΔCE "
            f"{round(ev.get('delta_ce_with_errors', ev['ce_with_errors'] - ev['ce_clean']), 3) + 0.0:.3f}, "
            f"KL {ev['kl_with_errors']:.3f}, top-1 {ev['top1_agreement_with_errors']:.0%}")


def _options(obj: Any) -> dict[str, Any]:
    d = asdict(obj)
    return {k: v for k, v in d.items() if k not in NOT_OUTPUT}


def run_pipeline(cfg: RunConfig) -> RunResult:
    """Run (or reuse) every stage, in order; each stage's fingerprint includes its inputs' fingerprints."""
    from saescope.interp.pipeline import check_backends

    check_backends(cfg.interp)  # a missing key or unreachable server: one line now, not after capture and training
    p = _Pipeline(cfg)
    p.seed_dataset()
    store, st = p.store()
    saes = p.saes(store)
    tc = p.transcoders(store)
    # the model's forward passes are over when collation reads the store: drop its memory-mapped weight pages
    # (clean, re-read on the next touch), which otherwise stay resident through collation, the run's peak
    if cfg.capture.context_len == cfg.collate.excerpt_len + 1:
        from saescope.train.memory import release_file_pages

        log.info("released %.0f MB of memory-mapped model weights", release_file_pages(p.hm.model) / 1e6)
    col, collated = p.collated(store, st, saes, tc)
    p.explanations(col, collated)
    return RunResult(p.done, col.path, p.decisions)


class _Pipeline:
    """The run's shared state (model, studied layer, report) and one method per stage."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.out = cfg, Path(cfg.out)
        self.hm = cfg.model.load()
        self.layer = resolve_layer(cfg.layer, self.hm.n_layers)
        self.hookpoint = f"resid_post.{self.layer}"
        self.model_id = {"model": cfg.model.model, "dtype": cfg.model.dtype}
        self.sae_hps = [canonical_hookpoint(f"{kind.strip()}.{self.layer}") for kind in cfg.saes.split(",")
                        if kind.strip()]
        self.done: list[tuple[str, Path]] = []
        self.decisions: dict[str, str] = {}

    def start(self, stage: Stage, keep: bool = False) -> bool:
        """Decide, say so in one line, prepare; True when the stage must (re)compute. `keep`: a changed stage
        merges into its old output instead of clearing it."""
        decision, why = stage.decide()
        self.decisions[stage.name] = decision
        log.info("stage %s", why)
        if decision == "reuse":
            return False
        from saescope.train.memory import trim_freed_memory

        trim_freed_memory()  # what the stages before freed goes back to the OS before this one allocates
        stage.begin(decision, keep=keep)
        return True

    def seed_dataset(self) -> None:
        """1. the seed activation dataset: the 7 seed prompts, greedy generation, the studied layer's resid_post."""
        from saescope.capture.generate import generate_seed_dataset, read_prompts

        cfg = self.cfg
        seed = Stage("seed_dataset", self.out / "seed_dataset",
                     {**self.model_id, "hookpoint": self.hookpoint, "generate": cfg.generate}, {})
        if self.start(seed):
            generate_seed_dataset(self.hm, seed.path, self.hookpoint, read_prompts(""), cfg.generate)
            seed.finish()
        self.done.append(("seed dataset (activations_<i>.pt + metadata.json)", seed.path))

    def store(self) -> tuple[Stage, ActivationStore]:
        """2. the activation store: every hookpoint an SAE is trained on, at the studied layer."""
        from saescope.capture import run as capture
        from saescope.capture.config import CaptureConfig
        from saescope.store import ActivationStore

        cfg, layer = self.cfg, self.layer
        # where the store's contexts are the collation's excerpts, it also keeps the studied layer's attention
        # pattern and values (0.5k floats a token on gemma-3-270m): heads and token pairs are then collated
        # without a model pass
        attention = [f"attn_pattern.{layer}", f"attn_value.{layer}"] \
            if cfg.capture.context_len == cfg.collate.excerpt_len + 1 else []
        hookpoints = ",".join(dict.fromkeys([self.hookpoint, *self.sae_hps, *attention]))
        store = Stage("store", self.out / "store", {**self.model_id, "data": asdict(cfg.data),
                                                    "capture": _options(cfg.capture), "hookpoints": hookpoints}, {})
        if self.start(store):
            capture(CaptureConfig(model=cfg.model, data=cfg.data, capture=cfg.capture, out=str(store.path),
                                  hookpoints=hookpoints), self.hm)
            store.finish()
        st = ActivationStore(store.path, verify=False)
        self.done.append((f"activation store ({st.rows:,} tokens x {len(st.hookpoints)} hookpoints)", store.path))
        return store, st

    def trainer_for(self, hp: str) -> TrainerConfig:
        """The run's trainer options for one hookpoint: residual-stream SAEs take --resid_epochs passes over the
        store (the model amplifies their error most: docs/metrics.md), --resid_arch and --resid_encoder; the others
        --train.epochs, --train.arch and --train.encoder."""
        from dataclasses import replace

        from saescope.models.hookpoints import parse_hookpoint

        if parse_hookpoint(hp)[0] not in ("resid_post", "resid_pre"):
            return self.cfg.train
        return replace(self.cfg.train, epochs=self.cfg.resid_epochs or self.cfg.train.epochs,
                       arch=self.cfg.resid_arch or self.cfg.train.arch,
                       encoder=self.cfg.resid_encoder or self.cfg.train.encoder)

    def saes(self, store: Stage) -> list[Stage]:
        """3. one SAE per hookpoint (trained on the store, evaluated on its held-out shard and spliced into the
        model)."""
        from saescope.io import read_json, write_json
        from saescope.train.config import EvalConfig, TrainConfig
        from saescope.train.evaluate import headline
        from saescope.train.on_store import evaluate_many
        from saescope.train.run_train import run as train

        cfg = self.cfg
        saes, trained = [], []
        for hp in self.sae_hps:
            trainer = self.trainer_for(hp)
            sae = Stage(f"sae {hp}", self.out / "saes" / hp.split(".")[0],
                        {"trainer": _options(trainer), "hookpoint": hp}, {"store": store.fingerprint})
            if self.start(sae):
                train(TrainConfig(trainer=trainer, store=str(store.path), hookpoint=hp, out=str(sae.path),
                                  device=cfg.model.device), hm=self.hm)
                trained.append((sae, hp))
            saes.append(sae)
        # evaluated together: the spliced CE/KL of every SAE shares one clean pass per batch (each stage finishes
        # only once its eval.json is written, so a run killed here evaluates them again)
        evs = evaluate_many([EvalConfig(sae=str(sae.path), store=str(store.path), hookpoint=hp,
                                        holdout_shards=cfg.train.holdout_shards, contexts=cfg.eval_contexts,
                                        spliced_from="corpus", max_seconds=cfg.eval_seconds)
                             for sae, hp in trained], hm=self.hm) if trained else []
        for (sae, _), ev in zip(trained, evs):
            write_json(sae.path / "eval.json", ev)
            sae.finish()
        for sae, hp in zip(saes, self.sae_hps):
            ev = read_json(sae.path / "eval.json")
            trainer = self.trainer_for(hp)
            self.done.append((f"SAE {hp} {trainer.arch} F={trainer.width} ({headline(ev)})", sae.path))
        return saes

    def transcoders(self, store: Stage) -> Stage | None:
        """3b. a transcoder on every layer, trained online (one model forward per batch of contexts feeds every
        layer's), then the replacement model (every MLP replaced at once, with and without error terms) and each
        layer's FVU/L0 on the store's held-out contexts (the corpus's last contexts; training reads its first)."""
        from saescope.io import read_json, write_json
        from saescope.train.config import OnlineConfig

        cfg, opts = self.cfg, self.cfg.transcoders
        layers = opts.layer_list(self.hm.n_layers)
        if not layers:
            return None
        tc = Stage("transcoders", self.out / "transcoders",
                   {**self.model_id, "data": asdict(cfg.data), "context_len": cfg.capture.context_len,
                    "seed": cfg.train.seed, **asdict(opts)}, {"store": store.fingerprint})
        if self.start(tc):
            from saescope.train.run_train import run as train

            hps = ",".join(f"mlp_in.{l}" for l in layers)
            trained = train(OnlineConfig(model=cfg.model, data=cfg.data, trainer=opts.trainer(cfg.train.seed),
                                         hookpoints=hps, out=str(tc.path), context_len=cfg.capture.context_len,
                                         forward_contexts=opts.transcoder_forward_contexts, resume=False), hm=self.hm)
            write_json(tc.path / "eval.json", self._replacement(store, tc, trained))
            tc.finish()
        ev = read_json(tc.path / "eval.json")
        self.done.append((f"transcoders on {len(layers)} layers ({opts.transcoder_kind} F={opts.transcoder_width}; "
                          f"{replacement_headline(ev)})", tc.path))
        return tc

    def _replacement(self, store: Stage, tc: Stage, trained: TrainResult) -> dict[str, Any]:
        """The replacement model's metrics on held-out store contexts, with each layer's training report."""
        from saescope.sae.transcoder_io import load_transcoders
        from saescope.store import ActivationStore
        from saescope.train.on_store import contexts_from_store, split_shards
        from saescope.train.replacement import replacement_metrics

        st = ActivationStore(store.path, verify=False)
        held = split_shards(st, self.cfg.train.holdout_shards)[1]
        first_held = min(st.shards[i]["contexts"][0] for i in held)
        opts = self.cfg.transcoders  # training reads at most its tokens, the buffer and one forward's rows more
        used = -(-(opts.transcoder_tokens + opts.transcoder_buffer_rows) // (self.cfg.capture.context_len - 1)) + \
            opts.transcoder_forward_contexts
        if used > first_held:  # a larger --transcoder_tokens than the store's training part
            log.warning("the transcoders trained on %d contexts, past the store's first held-out context (%d): their "
                        "replacement metrics include training contexts", used, first_held)
        ctx = contexts_from_store(st, held, self.cfg.transcoders.transcoder_eval_contexts, self.hm.tokenizer.bos_token_id)
        device = next(self.hm.model.parameters()).device
        ev = replacement_metrics(self.hm, load_transcoders(str(tc.path)).to(device).eval(), ctx)
        for d in trained.dictionaries:  # layer_L: the training run's last logged dead fraction and FVU
            ev["per_layer"][d.name.split("_")[1]].update(dead_fraction=d.metrics.get("dead"), train_fvu=d.metrics.get("fvu"))
        ev["dead_fraction"] = sum(d.metrics.get("dead") or 0.0 for d in trained.dictionaries) / len(trained.dictionaries)
        ev["train_tokens"] = max(d.tokens for d in trained.dictionaries)
        ev["train_tokens_per_s"] = trained.dictionaries[0].tokens_per_s
        return ev

    def whole_layers(self) -> list[int]:
        """The layers collated besides the studied one (--collate_layers)."""
        spec = self.cfg.collate_layers.strip()
        layers = list(range(self.hm.n_layers)) if spec == "*" else \
            TranscoderRunOptions(transcoder_layers=spec).layer_list(self.hm.n_layers) if spec else []
        return [l for l in layers if l != self.layer]

    def collated(self, store: Stage, st: ActivationStore, saes: list[Stage],
                 tc: Stage | None) -> tuple[Stage, CollateResult]:
        """4. collated records: the studied layer's MLP neurons, heads (by token pair) and every SAE's latents
        (attention SAEs also by pair), from the store where its contexts are the excerpts (no second model pass);
        then, from one full-model pass over --whole_model_tokens, every other layer's neurons and heads and every
        transcoder latent."""
        from saescope.collate.config import CollateConfig
        from saescope.collate.run_collate import run as collate

        cfg, hm, layer = self.cfg, self.hm, self.layer
        from_store = st.context_len == cfg.collate.excerpt_len + 1
        if not from_store:
            log.info("the store's contexts (%s tokens) are not excerpts of %d: collating every unit with the model",
                     st.context_len, cfg.collate.excerpt_len)
        col = Stage("collated", self.out / "collated",
                    {**self.model_id, "data": asdict(cfg.data), "collate": _options(cfg.collate), "layer": layer,
                     "from_store": from_store, "whole_layers": self.whole_layers(),
                     "whole_model_tokens": cfg.whole_model_tokens},
                    {**{s.name: s.fingerprint for s in saes}, **({"store": store.fingerprint} if from_store else {}),
                     **({"transcoders": tc.fingerprint} if tc is not None else {})})
        if self.start(col):
            collated = collate(CollateConfig(model=cfg.model, data=cfg.data, collate=cfg.collate, out=str(col.path),
                                             layers=str(layer), sae=",".join(str(s.path) for s in saes),
                                             store=str(store.path) if from_store else ""), hm)
            if self.whole_layers() or tc is not None:  # writes beside the above (the manifest keeps both)
                from saescope.train.memory import trim_freed_memory

                trim_freed_memory()  # the studied layer's collation state, freed
                whole = replace(cfg.collate, max_tokens=cfg.whole_model_tokens,
                                units="mlp,heads" if self.whole_layers() else "")
                collated = collate(CollateConfig(model=cfg.model, data=cfg.data, collate=whole, out=str(col.path),
                                                 layers=",".join(map(str, self.whole_layers())),
                                                 transcoders=str(tc.path) if tc is not None else ""), hm)
            assert collated is not None  # `saescope run` is one process
            col.finish()
        else:
            collated = CollateResult.read(col.path / hm.name)
        kinds = sorted({(d.unit_type, d.by_token_pair) for d in collated.datasets})
        layers = sorted({d.layer for d in collated.datasets})
        self.done.append((f"collated records ({len(collated.datasets)} datasets, {len(kinds)} kinds, "
                          f"{'layer ' + str(layer) if len(layers) == 1 else f'{len(layers)} layers'})",
                          collated.root))
        return col, collated

    def explanations(self, col: Stage, collated: CollateResult) -> None:
        """5. explanations and scores of every collated dataset."""
        from saescope.interp.config import InterpConfig, InterpResult
        from saescope.interp.pipeline import run_many as interp_many

        cfg = self.cfg
        interp = Stage("explanations", col.path / self.hm.name / "explanations", {"interp": _options(cfg.interp)},
                       {"collated": col.fingerprint})
        # same records, other interp options: merge into the explanations (every unit of the run redone with the new
        # options), so units explained by hand with another backend are never deleted by a re-run
        merge = interp.same_inputs()
        if self.start(interp, keep=merge):
            redo = merge and self.decisions[interp.name] == "changed"
            results = interp_many([InterpConfig(interp=cfg.interp, root=str(collated.root), dataset=d.path,
                                                overwrite=redo) for d in collated.datasets], hm=self.hm)
            interp.finish()
        else:
            results = [InterpResult.read(interp.path / d.path) for d in collated.datasets]
        mean = sum(x.mean_score for x in results) / max(len(results), 1)
        null = sum(x.mean_null_score for x in results) / max(len(results), 1)
        self.done.append((f"explanations + scores of {len(results)} datasets ({cfg.interp.explainer}: mean "
                          f"{mean:.3f}, null {null:.3f})", interp.path))
