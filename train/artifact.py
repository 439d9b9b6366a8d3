"""The model artifact: one self-describing directory per trained reward model.

    model_dir/
      manifest.json            schema version, sha256 of every other file (metadata.json included),
                               and the compiled library's build record
      metadata.json            ModelMetadata (embedding model and the embedder record, layout, prompts,
                               protocol, training configuration, metrics); never rewritten after training
      model.lgb.txt | model.xgb.json   native booster file
      prompt_embeddings.npy    float32 (P, d), rows in metadata.prompts order
      train_questions.npy      uint64 (Q,), sorted: :func:`oirl_fast.schema.question_hashes` of the
                               questions the model was trained on (optional for hand-built artifacts)
      neighbours.npz           the near-duplicate vote's table (optional; metadata.fallback.vote, written by
                               `oirl train --fallback-margin vote`): training question vectors and outcomes
      compiled/model.so        native library from treelite + tl2cgen (optional)
      kernel_forest.npz        the kernel's tree description, read from the native model by treelite at
                               training, so that scoring needs no treelite (:mod:`oirl_fast.kernels.forest_file`)
      embedder/                the static embedder the model was trained with (weights, tokenizer, config,
                               build record; :mod:`oirl_fast.encoders.static_store`), so that scoring never
                               distills; absent for the minilm and folder embedders

It is written to a temporary directory and renamed into place, so a crash never
leaves a partial artifact that looks whole.  Loading checks the schema version, the
checksums and what the caller asks for (embedding model, prompt set, feature layout);
a compiled library built on another platform or with another treelite/tl2cgen is
rebuilt in the user cache rather than loaded (:func:`usable_library`): loading never
writes to the artifact.

The manifest guards against edited or corrupted files, metadata.json included (an
edited prompt text no longer passes), not against someone who deliberately recomputes
the manifest too: it is a checksum list, not a signature.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_text
from ..calibration import IsotonicCalibrator
from ..embed import default_cache_dir
from ..encoders import legacy_record
from ..encoders.static_store import EMBEDDER_DIR, store_static
from ..errors import OirlError
from ..features import FeatureLayout
from ..kernels.forest_file import FOREST_FILE, save_forest
from ..paths import check_utf8_name
from . import compile as compile_step
from .model_format import LIBRARY_FILE, MODEL_FILES, library_identity, library_record, load_treelite_model
from .reward_model import RewardModel, TrainConfig

# 2: per-file sha256 checksums in metadata.json.
# 3: checksums (metadata.json's too) in manifest.json; the training questions' hashes.
ARTIFACT_SCHEMA_VERSION = 3
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.json"
PROMPT_EMB_FILE = "prompt_embeddings.npy"
TRAIN_QUESTIONS_FILE = "train_questions.npy"


def embeddings_hash(emb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelMetadata:
    dataset: str
    backend: str
    embedding_model: str
    feature_layout: dict
    prompts: list[dict]  # {"id", "text", "seen_in_training"}
    prompt_embeddings_sha256: str
    protocol: dict
    train_config: dict
    best_iteration: int
    n_train_examples: int
    metrics: dict = field(default_factory=dict)
    calibration: dict | None = None  # IsotonicCalibrator.to_dict(), fitted on validation questions
    # {"file", "count", "key"} of TRAIN_QUESTIONS_FILE, or None when the artifact does not record them
    train_questions: dict | None = None
    # oirl_fast.encoders.encoder_record(): kind, name, dim, identity, weights_sha256; None (older artifacts) = MiniLM
    embedder: dict | None = None
    # oirl_fast.reranking.fallback: {"prompt_id", "margin", ...}: keep that prompt unless the pick's score beats its
    # score by more than margin (None: always keep it); None (older artifacts, or not asked for) = no fallback
    fallback: dict | None = None
    schema_version: int = ARTIFACT_SCHEMA_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def embedder_record(self) -> dict:
        """The embedder the model was trained with (an artifact without the record: MiniLM)."""
        return self.embedder if self.embedder is not None else legacy_record()

    @property
    def prompt_ids(self) -> list[str]:
        return [p["id"] for p in self.prompts]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, path: Path) -> "ModelMetadata":
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise OirlError(f"unreadable model metadata ({exc})", path) from None


@dataclass
class Manifest:
    """manifest.json: what the artifact's files must hash to, and how its library was built."""

    files: dict  # file relative to the artifact (metadata.json included) -> sha256
    compiled_library: dict | None = None  # {"file", "platform", "tl2cgen", "treelite", "compile_seconds"}
    schema_version: int = ARTIFACT_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


@dataclass
class Artifact:
    path: Path
    metadata: ModelMetadata
    model: RewardModel
    prompt_embeddings: np.ndarray
    manifest: Manifest | None = None
    train_questions: np.ndarray | None = None  # uint64 (Q,) sorted, or None when not recorded
    neighbours: dict | None = None  # the near-duplicate vote's arrays (reranking.fallback.load_vote_arrays), or None

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout.from_dict(self.metadata.feature_layout)

    @property
    def compiled_library(self) -> dict | None:
        return None if self.manifest is None else self.manifest.compiled_library

    @property
    def library_path(self) -> Path | None:
        lib = self.compiled_library
        return None if lib is None else self.path / lib["file"]

    @property
    def embedder_folder(self) -> Path | None:
        """The static embedder the artifact carries (checked against the manifest on load), or None."""
        files = {} if self.manifest is None else self.manifest.files
        return self.path / EMBEDDER_DIR if f"{EMBEDDER_DIR}/settings.json" in files else None

    @property
    def forest_path(self) -> Path | None:
        """The kernel's tree description (checked against the manifest on load), or None (older artifacts)."""
        files = {} if self.manifest is None else self.manifest.files
        return self.path / FOREST_FILE if FOREST_FILE in files else None


def check_finite_model(model_file: Path, backend: str) -> None:
    """Refuse a native model that can score some input as non-finite: a non-finite leaf value or
    base score, or leaves so large that a sum over the trees overflows (a diverged fit).

    Read back through treelite, the reader every scoring path uses, so LightGBM and XGBoost
    files are checked alike."""
    try:
        model = load_treelite_model(Path(model_file), backend)
    except OirlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file treelite cannot read is not a model we write
        raise OirlError(f"the fitted model cannot be read back ({exc}); nothing written") from None
    base = np.asarray(model.get_header_accessor().get_field("base_scores"), dtype=np.float64)
    if not np.isfinite(base).all():
        raise OirlError("the fitted model has a non-finite base score; nothing written (lower --learning-rate)")
    bound = float(np.abs(base).max(initial=0.0))
    with np.errstate(over="ignore"):
        for t in range(int(model.num_tree)):
            leaves = np.asarray(model.get_tree_accessor(t).get_field("leaf_value"), dtype=np.float64)
            if not np.isfinite(leaves).all():
                raise OirlError(f"the fitted model has non-finite leaf values (tree {t}); nothing written "
                                "(the boosting diverged: lower --learning-rate)")
            bound += float(np.abs(leaves).max(initial=0.0))
    if not np.isfinite(bound):
        raise OirlError("the fitted model's leaf values are so large that a score overflows to infinity; nothing "
                        "written (the boosting diverged: lower --learning-rate)")


def save_artifact(
    out_dir: str | Path,
    model: RewardModel,
    metadata: ModelMetadata,
    prompt_embeddings: np.ndarray,
    compile_library: bool = True,
    train_questions: np.ndarray | None = None,
    embedder_folder: str | Path | None = None,
    neighbours: dict | None = None,
) -> Path:
    """Write the artifact directory atomically; compile the native library unless told not to.

    ``train_questions``: uint64 (Q,) :func:`oirl_fast.schema.question_hashes` of the training
    questions (stored sorted and unique). ``embedder_folder``: the static embedder's build, copied
    into ``embedder/`` (the model must have been trained with it). ``neighbours``: the near-duplicate vote's
    arrays, written to the file ``metadata.fallback["vote"]["file"]``. A model with a non-finite leaf value is
    refused before anything is written."""
    # here, not at the top: schema imports pyarrow, which loading a model for scoring does not need
    from ..schema import QUESTION_HASH_KEY

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model_file = model.save(tmp)
        check_finite_model(model_file, model.backend)  # raising here leaves out_dir as it was
        np.save(tmp / PROMPT_EMB_FILE, np.ascontiguousarray(prompt_embeddings, dtype=np.float32))
        from ..kernels.quickscorer import ForestDescription  # here: numba, which loading does not need

        save_forest(ForestDescription.from_file(model_file, model.backend), tmp / FOREST_FILE)
        if embedder_folder is not None:
            store_static(embedder_folder, tmp / EMBEDDER_DIR)
        if train_questions is not None:
            hashes = np.unique(np.asarray(train_questions, dtype=np.uint64))
            np.save(tmp / TRAIN_QUESTIONS_FILE, hashes)
            metadata.train_questions = {"file": TRAIN_QUESTIONS_FILE, "count": int(len(hashes)), "key": QUESTION_HASH_KEY}
        if neighbours is not None:
            np.savez(tmp / metadata.fallback["vote"]["file"], **neighbours)
        library = None
        if compile_library:
            t0 = time.perf_counter()
            compile_step.compile_library(model_file, model.backend, tmp / LIBRARY_FILE, nthread=model.config.nthread)
            library = library_record(time.perf_counter() - t0)
        (tmp / METADATA_FILE).write_text(metadata.to_json(), encoding="utf-8")
        files = {str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / MANIFEST_FILE).write_text(Manifest(files, library).to_json(), encoding="utf-8")
    return out_dir


def _verify(path: Path, rel: str, manifest: Manifest) -> None:
    expected = manifest.files.get(rel)
    if expected is None:
        raise OirlError(f"manifest.json has no checksum for {rel}", path / MANIFEST_FILE)
    if not (path / rel).is_file():
        raise OirlError(f"{rel} missing from the model directory", path)
    if file_sha256(path / rel) != expected:
        raise OirlError("file does not match its checksum in manifest.json (changed or corrupted)", path / rel)


def read_manifest(path: str | Path) -> Manifest:
    """The artifact's manifest, refusing another schema version (schema 2 artifacts, whose
    metadata.json was not checksummed, included) with a one-line error."""
    path = Path(path)
    man_path = path / MANIFEST_FILE
    meta_path = path / METADATA_FILE
    if not man_path.is_file():
        if meta_path.is_file():
            try:
                version = json.loads(meta_path.read_text(encoding="utf-8")).get("schema_version")
            except (ValueError, AttributeError, UnicodeDecodeError):
                version = None
            raise OirlError(
                f"model artifact of schema version {version} without manifest.json; this oirl-fast reads schema "
                f"{ARTIFACT_SCHEMA_VERSION} (metadata.json checksummed, training questions recorded): retrain it "
                "with `oirl train`", path)
        raise OirlError("not a model directory (no manifest.json)", path)
    try:
        data = json.loads(man_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise OirlError(f"unreadable manifest ({exc})", man_path) from None
    if not isinstance(data, dict):
        raise OirlError("unreadable manifest (not a JSON object)", man_path)
    if data.get("schema_version") != ARTIFACT_SCHEMA_VERSION:
        raise OirlError(
            f"artifact schema version {data.get('schema_version')}, this oirl-fast reads {ARTIFACT_SCHEMA_VERSION}: "
            "retrain it with `oirl train`", man_path)
    files, lib = data.get("files"), data.get("compiled_library")
    if (not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
            or not (lib is None or isinstance(lib, dict) and isinstance(lib.get("file"), str))
            or set(data) - {"files", "compiled_library", "schema_version"}):
        raise OirlError("unreadable manifest (unexpected fields)", man_path)
    return Manifest(files=files, compiled_library=lib)


def load_artifact(
    path: str | Path,
    embedding_model: str | None = None,
    prompt_ids: list[str] | None = None,
    feature_layout: FeatureLayout | None = None,
) -> Artifact:
    """Load and check an artifact.

    Refuses (``OirlError`` naming the file) an artifact of another schema version, one whose
    files do not match their checksums, and one built for another embedding model, prompt
    set or feature layout than the ones given.
    """
    path = Path(path)
    check_utf8_name(path, "model folder")
    meta_path = path / METADATA_FILE
    manifest = read_manifest(path)
    # metadata.json is read only once its checksum matches: an edited prompt text is refused here.
    _verify(path, METADATA_FILE, manifest)
    meta = ModelMetadata.from_json(meta_path.read_text(encoding="utf-8"), meta_path)
    if meta.schema_version != ARTIFACT_SCHEMA_VERSION:
        raise OirlError(
            f"artifact schema version {meta.schema_version}, this oirl-fast reads {ARTIFACT_SCHEMA_VERSION}", meta_path
        )
    if embedding_model is not None and meta.embedding_model != embedding_model:
        raise OirlError(
            f"model was built for embedding model {meta.embedding_model!r}, not {embedding_model!r}", meta_path
        )
    if prompt_ids is not None and sorted(prompt_ids) != sorted(meta.prompt_ids):
        raise OirlError(
            f"model was built for prompts {meta.prompt_ids}, the log has {sorted(prompt_ids)}", meta_path
        )
    layout = FeatureLayout.from_dict(meta.feature_layout)
    if meta.embedder is not None and int(meta.embedder.get("dim", -1)) not in (layout.query_dim, -1):
        raise OirlError(f"the embedder record says dimension {meta.embedder.get('dim')}, the feature layout "
                        f"{layout.query_dim}", meta_path)
    if feature_layout is not None and layout != feature_layout:
        raise OirlError(f"model was built for feature layout {layout}, not {feature_layout}", meta_path)
    emb_path = path / PROMPT_EMB_FILE
    if not emb_path.is_file():
        raise OirlError("prompt embeddings missing", emb_path)
    config = TrainConfig(**meta.train_config)
    questions_file = (meta.train_questions or {}).get("file")
    # the stored embedder and kernel trees: verified when the manifest lists them (older artifacts have neither)
    stored = [rel for rel in manifest.files if rel.startswith(f"{EMBEDDER_DIR}/") or rel == FOREST_FILE]
    vote_file = ((meta.fallback or {}).get("vote") or {}).get("file")
    for rel in (PROMPT_EMB_FILE, MODEL_FILES[config.backend], *([questions_file] if questions_file else []),
                *([vote_file] if vote_file else []), *stored):
        _verify(path, rel, manifest)
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise OirlError(f"not a readable .npy file ({exc})", emb_path) from None
    if emb.shape[0] != len(meta.prompts) or embeddings_hash(emb) != meta.prompt_embeddings_sha256:
        raise OirlError("prompt embeddings do not match the hash in metadata.json", emb_path)
    questions = None
    if questions_file:
        q_path = path / questions_file
        try:
            questions = np.load(q_path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise OirlError(f"not a readable .npy file ({exc})", q_path) from None
        if questions.dtype != np.uint64 or questions.ndim != 1:
            raise OirlError(f"training question hashes must be uint64 (Q,), got {questions.dtype}{questions.shape}", q_path)
    from ..reranking.fallback import load_vote_arrays

    neighbours = load_vote_arrays(path, meta.fallback, layout.query_dim)
    model = RewardModel.load(path, config, layout.n_features, meta.best_iteration)
    model.calibrator = IsotonicCalibrator.from_dict(meta.calibration)
    return Artifact(path=path, metadata=meta, model=model, prompt_embeddings=emb, manifest=manifest,
                    train_questions=questions, neighbours=neighbours)


def library_mismatch(artifact: Artifact) -> str | None:
    """Why the artifact's compiled library cannot be loaded here, or None when it can."""
    lib = artifact.compiled_library
    if lib is None:
        return "the model has no compiled library"
    for key, value in library_identity().items():
        if lib.get(key) != value:
            return f"built for {key} {lib.get(key)}, this is {value}"
    path = artifact.path / lib["file"]
    if not path.is_file():
        return f"{lib['file']} is missing"
    if file_sha256(path) != artifact.manifest.files.get(lib["file"]):
        return f"{lib['file']} does not match its checksum"
    return None


def cached_library_path(artifact: Artifact) -> Path:
    """Where a library rebuilt for this machine lives: the user cache, keyed by the native model's
    checksum and by what it is built with, never the model folder."""
    ident = library_identity()
    model_sum = artifact.manifest.files[MODEL_FILES[artifact.model.backend]]
    tag = f"{model_sum[:16]}-{ident['platform']}-tl2cgen{ident['tl2cgen']}-treelite{ident['treelite']}"
    return default_cache_dir() / "libraries" / tag / "model.so"


def usable_library(artifact: Artifact, log=lambda s: None) -> Path:
    """Path of a compiled library that this platform and these library versions can load
    (:func:`verified_library` without its checksum)."""
    return verified_library(artifact, log)[0]


LIBRARY_RECORD_FORMAT = "oirl-library-build"


def _record_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".json")


def _cached_mismatch(lib: Path, model_sha256: str) -> tuple[str | None, str]:
    """(why the cached library ``lib`` cannot be trusted for the model of checksum ``model_sha256``,
    or None; the library's SHA-256)."""
    try:
        record = json.loads(_record_path(lib).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "has no build record", ""
    if not isinstance(record, dict) or record.get("format") != LIBRARY_RECORD_FORMAT:
        return "has no build record", ""
    if record.get("model_sha256") != model_sha256:
        return "was built from another model", ""
    sha = file_sha256(lib)
    if sha != record.get("library_sha256"):
        return "does not match its recorded checksum (truncated or replaced)", sha
    return None, sha


def verified_library(artifact: Artifact, log=lambda s: None) -> tuple[Path, str]:
    """(path, SHA-256) of a compiled library that this platform and these library versions can load,
    checked against the model before anything loads it.

    The artifact's own library when it fits (checked against manifest.json); otherwise (built on
    another OS, CPU, Python, treelite or tl2cgen; missing or corrupted) a library rebuilt from the
    native model file in the user cache (:func:`cached_library_path`), once per machine. A cached
    library is used only if its build record names this model's checksum and its own checksum still
    matches; a truncated one (which would crash the process with SIGBUS when loaded) or another
    model's is rebuilt. The model folder is never written to.
    """
    reason = library_mismatch(artifact)
    if reason is None:
        return artifact.library_path, artifact.manifest.files[artifact.compiled_library["file"]]
    target = cached_library_path(artifact)
    model_file = MODEL_FILES[artifact.model.backend]
    model_sum = artifact.manifest.files[model_file]
    if target.is_file():
        why, sha = _cached_mismatch(target, model_sum)
        if why is None:
            return target, sha
        log(f"the cached compiled library {why}: building it again ({target})")
    else:
        log(f"building the compiled library in the cache ({reason}): {target}")
    _record_path(target).unlink(missing_ok=True)  # no record while the library is being replaced
    compile_step.compile_library(artifact.path / model_file, artifact.model.backend, target,
                                 nthread=artifact.model.config.nthread)
    sha = file_sha256(target)
    write_text(_record_path(target), json.dumps({"format": LIBRARY_RECORD_FORMAT, "model_sha256": model_sum,
                                                 "library_sha256": sha, **library_identity()}, indent=1))
    return target, sha
