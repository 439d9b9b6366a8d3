"""The model artifact: one self-describing directory per trained reward model.

    model_dir/
      metadata.json            ModelMetadata (schema version, embedding model and the embedder record,
                             layout, prompts, protocol, metrics, sha256 of every other file)
      model.lgb.txt | model.xgb.json   native booster file
      prompt_embeddings.npy    float32 (P, d), rows in metadata.prompts order
      compiled/model.so        native library from treelite + tl2cgen (optional)

It is written to a temporary directory and renamed into place, so a crash never
leaves a partial artifact that looks whole.  Loading checks the schema version, the
checksums and what the caller asks for (embedding model, prompt set, feature layout);
a compiled library built on another platform or with another treelite/tl2cgen is
rebuilt rather than loaded (:func:`usable_library`).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_text
from ..calibration import IsotonicCalibrator
from ..errors import OirlError
from ..features import FeatureLayout
from .reward_model import MODEL_FILES, RewardModel, TrainConfig

# 2: per-file sha256 checksums in metadata.json.
ARTIFACT_SCHEMA_VERSION = 2
METADATA_FILE = "metadata.json"
PROMPT_EMB_FILE = "prompt_embeddings.npy"
LIBRARY_FILE = "compiled/model.so"


def embeddings_hash(emb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def platform_tag() -> str:
    return f"{platform.system()}-{platform.machine()}-py{platform.python_version()}"


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
    compiled_library: dict | None = None
    calibration: dict | None = None  # IsotonicCalibrator.to_dict(), fitted on validation questions
    # oirl_fast.encoders.encoder_record(): kind, name, dim, identity, weights_sha256; None (older artifacts) = MiniLM
    embedder: dict | None = None
    checksums: dict = field(default_factory=dict)  # file relative to the artifact -> sha256
    schema_version: int = ARTIFACT_SCHEMA_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def embedder_record(self) -> dict:
        """The embedder the model was trained with (an artifact without the record: MiniLM)."""
        from ..encoders import legacy_record

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
class Artifact:
    path: Path
    metadata: ModelMetadata
    model: RewardModel
    prompt_embeddings: np.ndarray

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout.from_dict(self.metadata.feature_layout)

    @property
    def library_path(self) -> Path | None:
        lib = self.metadata.compiled_library
        return None if lib is None else self.path / lib["file"]


def save_artifact(
    out_dir: str | Path,
    model: RewardModel,
    metadata: ModelMetadata,
    prompt_embeddings: np.ndarray,
    compile_library: bool = True,
) -> Path:
    """Write the artifact directory atomically; compile the native library unless told not to."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model_file = model.save(tmp)
        np.save(tmp / PROMPT_EMB_FILE, np.ascontiguousarray(prompt_embeddings, dtype=np.float32))
        if compile_library:
            from .compile import compile_library as _compile
            import tl2cgen
            import treelite

            t0 = time.perf_counter()
            _compile(model_file, model.backend, tmp / LIBRARY_FILE, nthread=model.config.nthread)
            metadata.compiled_library = {
                "file": LIBRARY_FILE,
                "platform": platform_tag(),
                "tl2cgen": tl2cgen.__version__,
                "treelite": treelite.__version__,
                "compile_seconds": round(time.perf_counter() - t0, 2),
            }
        metadata.checksums = {
            str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()
        }
        (tmp / METADATA_FILE).write_text(metadata.to_json(), encoding="utf-8")
    return out_dir


def _verify(path: Path, rel: str, meta: ModelMetadata) -> None:
    expected = meta.checksums.get(rel)
    if expected is None:
        raise OirlError(f"metadata.json has no checksum for {rel}", path / METADATA_FILE)
    if not (path / rel).is_file():
        raise OirlError(f"{rel} missing from the model directory", path)
    if file_sha256(path / rel) != expected:
        raise OirlError("file does not match its checksum in metadata.json (changed or corrupted)", path / rel)


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
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise OirlError("not a model directory (no metadata.json)", path)
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
    for rel in (PROMPT_EMB_FILE, MODEL_FILES[config.backend]):
        _verify(path, rel, meta)
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise OirlError(f"not a readable .npy file ({exc})", emb_path) from None
    if emb.shape[0] != len(meta.prompts) or embeddings_hash(emb) != meta.prompt_embeddings_sha256:
        raise OirlError("prompt embeddings do not match the hash in metadata.json", emb_path)
    model = RewardModel.load(path, config, layout.n_features, meta.best_iteration)
    model.calibrator = IsotonicCalibrator.from_dict(meta.calibration)
    return Artifact(path=path, metadata=meta, model=model, prompt_embeddings=emb)


def library_mismatch(artifact: Artifact) -> str | None:
    """Why the artifact's compiled library cannot be loaded here, or None when it can."""
    lib = artifact.metadata.compiled_library
    if lib is None:
        return "the model has no compiled library"
    import tl2cgen
    import treelite

    here = {"platform": platform_tag(), "tl2cgen": tl2cgen.__version__, "treelite": treelite.__version__}
    for key, value in here.items():
        if lib.get(key) != value:
            return f"built for {key} {lib.get(key)}, this is {value}"
    path = artifact.path / lib["file"]
    if not path.is_file():
        return f"{lib['file']} is missing"
    if file_sha256(path) != artifact.metadata.checksums.get(lib["file"]):
        return f"{lib['file']} does not match its checksum"
    return None


def usable_library(artifact: Artifact, log=lambda s: None) -> Path:
    """Path of a compiled library that this platform and these library versions can load.

    A library built elsewhere (another OS, CPU, Python, treelite or tl2cgen), missing or
    corrupted is rebuilt from the native model file: in the model directory when it is
    writable (metadata.json updated atomically), otherwise in the user cache.
    """
    reason = library_mismatch(artifact)
    if reason is None:
        return artifact.library_path
    import tl2cgen
    import treelite

    from .compile import compile_library

    meta = artifact.metadata
    writable = os.access(artifact.path, os.W_OK)
    if writable:
        target = artifact.path / LIBRARY_FILE
    else:
        base = Path(os.environ.get("OIRL_CACHE_DIR") or Path.home() / ".cache" / "oirl-fast")
        model_sum = meta.checksums[MODEL_FILES[artifact.model.backend]]
        target = base / "libraries" / f"{model_sum[:16]}-{platform_tag()}" / "model.so"
        if target.is_file():
            return target
    log(f"rebuilding the compiled library ({reason})")
    t0 = time.perf_counter()
    compile_library(artifact.path / MODEL_FILES[artifact.model.backend], artifact.model.backend, target,
                    nthread=artifact.model.config.nthread)
    if writable:
        meta.compiled_library = {
            "file": LIBRARY_FILE, "platform": platform_tag(), "tl2cgen": tl2cgen.__version__,
            "treelite": treelite.__version__, "compile_seconds": round(time.perf_counter() - t0, 2),
        }
        meta.checksums[LIBRARY_FILE] = file_sha256(target)
        write_text(artifact.path / METADATA_FILE, meta.to_json())
    return target
