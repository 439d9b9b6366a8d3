"""The model artifact: one self-describing directory per trained reward model.

    model_dir/
      metadata.json            ModelMetadata (schema version, embedding model, layout, prompts, protocol, metrics)
      model.lgb.txt | model.xgb.json   native booster file
      prompt_embeddings.npy    float32 (P, d), rows in metadata.prompts order
      compiled/model.so        native library from treelite + tl2cgen (optional)

It is written to a temporary directory and renamed into place, so a crash never
leaves a partial artifact that looks whole.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..calibration import IsotonicCalibrator
from ..errors import OirlError
from ..features import FeatureLayout
from .reward_model import MODEL_FILES, RewardModel, TrainConfig

ARTIFACT_SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
PROMPT_EMB_FILE = "prompt_embeddings.npy"
LIBRARY_FILE = "compiled/model.so"


def embeddings_hash(emb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes()).hexdigest()


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
    schema_version: int = ARTIFACT_SCHEMA_VERSION
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

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
        (tmp / METADATA_FILE).write_text(metadata.to_json(), encoding="utf-8")
    return out_dir


def load_artifact(
    path: str | Path,
    embedding_model: str | None = None,
    prompt_ids: list[str] | None = None,
) -> Artifact:
    """Load and check an artifact; refuse one built for another embedding model or prompt set."""
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
    emb_path = path / PROMPT_EMB_FILE
    if not emb_path.is_file():
        raise OirlError("prompt embeddings missing", emb_path)
    emb = np.load(emb_path, allow_pickle=False)
    if emb.shape[0] != len(meta.prompts) or embeddings_hash(emb) != meta.prompt_embeddings_sha256:
        raise OirlError("prompt embeddings do not match the hash in metadata.json", emb_path)
    layout = FeatureLayout.from_dict(meta.feature_layout)
    config = TrainConfig(**meta.train_config)
    model = RewardModel.load(path, config, layout.n_features, meta.best_iteration)
    model.calibrator = IsotonicCalibrator.from_dict(meta.calibration)
    return Artifact(path=path, metadata=meta, model=model, prompt_embeddings=emb)
