"""Process settings, read once from the environment (EDITLOOP_*) at start-up.

Everything else receives a `Settings` as an argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from editloop.paths import BASE_DIR, INSTRUCT_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDITLOOP_", extra="ignore")

    state_dir: Path = Path(".editloop")  # embedded default: everything lives under here
    database_url: str = ""  # default: sqlite:///<state_dir>/editloop.db
    blob_backend: Literal["local", "s3"] = "local"
    blob_dir: Path | None = None  # default: <state_dir>/blobs
    s3_endpoint: str = "127.0.0.1:9000"  # host:port of MinIO / any S3 endpoint
    s3_access_key: str = ""
    s3_secret_key: str = Field(default="", repr=False)
    s3_bucket: str = "editloop"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    broker_url: str = ""  # default: kombu SQLAlchemy transport on <state_dir>/broker.db
    result_backend: str = ""  # default: SQLAlchemy result backend on <state_dir>/results.db
    generator_model: Path = BASE_DIR / "t2i"
    editor_model: Path = BASE_DIR / "inpaint"
    instruct_model: Path = INSTRUCT_DIR  # served when no instruct version is promoted
    device: str | None = None  # cuda if present, else cpu
    max_message_mb: int = 32  # gRPC message size limit, both directions
    # who may call the services (README, "Tokens and TLS"): off (loopback only) or required (Bearer tokens)
    auth: Literal["off", "required"] = "off"
    auth_cache_s: float = 2.0  # a token lookup is reused this long: a revoked token stops working within it
    insecure_public: bool = False  # allow a non-loopback --host with EDITLOOP_AUTH=off
    token: SecretStr = Field(default=SecretStr(""), repr=False)  # the token clients (CLI, demo) send
    tls_cert: Path | None = None  # server certificate (PEM); with tls_key the services speak TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # CA of client certificates: set, the services demand one (mTLS)
    tls_ca: Path | None = None  # clients: the CA that signed the services' certificate (TLS on)
    tls_client_cert: Path | None = None  # clients: certificate and key presented for mTLS
    tls_client_key: Path | None = None
    drain_s: float = 1.0  # on SIGTERM, health says NOT_SERVING this long before a service's port closes
    # Reward.Score limits, checked before any model work (services/reward/servicer.py): a preference reward takes
    # its own input size only; the coherence model (fully convolutional) at most this side and these pixels per request
    reward_max_side: int = 256
    reward_max_request_pixels: int = 1_048_576  # 256 items of 64x64
    retrain_label_threshold: int = 200  # new valid labels that start an aesthetic reward run
    retrain_debounce_s: float = 600.0  # at most one triggered run per this many seconds
    drift_window: int = 100  # newest labels the drift check scores
    drift_min_accuracy: float = 0.6  # below this on the newest labels, retrain
    reward_train_steps: int = 1500  # steps of a triggered reward run, at most
    # ... and at most this many passes over its training pairs (at least 200 steps; 0: always reward_train_steps):
    # bench/reward_quality.py's recipe, ~3 passes, reached 0.95 of the annotators' ceiling at 4k labels
    reward_train_epochs: float = 3.0
    trigger_interval_s: float = 300.0  # Celery beat: how often the triggers are checked
    reload_interval_s: float = 5.0  # reward and editor services poll the registry for a newly promoted version
    label_studio_venv: Path = Path(".venv-label-studio")  # Label Studio's own virtualenv (made on first use)
    label_studio_port: int = 8080
    # an external Label Studio (compose, Kubernetes): its URL and a personal access token; unset, the clients use the
    # one `editloop up` / `editloop annotation up` started (<state_dir>/label-studio.json)
    label_studio_url: str = ""
    label_studio_token: SecretStr = Field(default=SecretStr(""), repr=False)
    label_studio_start_timeout_s: float = 900.0  # at most this long for Label Studio to answer /health
    label_studio_stall_s: float = 180.0  # ...and give up sooner when it writes nothing and answers nothing this long
    # `editloop up`: every part's port (0 = any free port, chosen at start and kept across restarts)
    generator_port: int = 50051
    editor_port: int = 50052
    aesthetic_port: int = 50053
    alignment_port: int = 50054
    coherence_port: int = 50055
    # the services on other hosts (compose, Kubernetes): "PART=HOST:PORT,..." with PART generator, editor,
    # reward-aesthetic, reward-alignment, reward-coherence; the clients and the trainers' scorers use them when no
    # stack runs on this state dir
    service_addresses: str = ""
    metrics_port: int = 0  # first Prometheus port of the services (the next ones follow); 0 = any free ports
    restart_backoff_max_s: float = 30.0  # a dying child is restarted after 1, 2, 4, ... s, at most this
    # processes per training job: >1 launches it with torchrun on the worker's node (one per GPU; gloo on CPU),
    # data-parallel with one checkpoint and one model version (trainers/distributed.py); reward runs so far
    train_procs: int = Field(default=1, ge=1, le=64)
    run_heartbeat_s: float = 30.0  # a running training run's worker touches its row this often
    run_mirror_s: float = 30.0  # a running run's checkpoint files are copied to the blob store this often
    run_stale_s: float = 300.0  # no heartbeat this long: the run's worker is gone (re-queued or failed)
    run_lost_s: float = 1800.0  # queued this long with its queue empty and no worker busy on it: message lost
    run_reap_interval_s: float = 60.0  # Celery beat: how often hung runs are looked for
    run_max_requeues: int = 2  # re-queues of a run whose worker died, before it is failed
    # the automatic loop (trainers/autoloop.py): a newly promoted reward version starts a feedback round
    loop_enabled: bool = True  # false: the loop never starts anything (the demo drives its own round)
    loop_rewards: str = "aesthetic=1,alignment=1"  # the rewards a round learns from, with their weights
    loop_stages: str = "pefl"  # the round's chain: pefl, pefl,adversarial, pefl,adversarial,progressive, dpo or grpo
    loop_feedback_steps: int = 200  # steps per stage
    loop_kl_weight: float = 100.0  # the measured recipe (BENCHMARKS.md, KL trust region)
    loop_feedback_lr: float = 2e-5  # the stages' learning rate (trainers/feedback/loop.py's default)
    # a reward drives the loop only if its promoted version beat chance on its held-out set at this level (one-sided
    # exact sign test, trainers/reward/run.py chance_floor); 1 = no floor
    loop_floor_alpha: float = 0.05
    # every promotion gate: a version whose run recorded a chance floor (every reward run) must beat chance on its
    # held-out set at this significance (one-sided exact sign test); 1 turns the floor off (editloop.registry)
    promotion_floor_alpha: float = 0.05
    loop_batch_size: int = 8  # examples per feedback step
    loop_eval_examples: int = 48  # held-out examples each stage's gate compares on
    loop_success_tolerance: float = 0.02  # the gate: judged success may fall this much below the served model's
    loop_interval_s: float = 120.0  # Celery beat: how often the loop checks (also after every reward promotion)
    # the loop's SeedEdit leg (trainers/align_loop.py): a promoted alignment reward starts alignment rounds
    loop_align_rounds: int = 1  # rounds per chain (0: the loop starts none)
    loop_align_interval_s: float = 0.0  # also a chain this long after the last one started (0: only on a promotion)
    loop_align_config: str = ""  # the rounds' settings as JSON (trainers/align/round_config.py), e.g. {"pairs": 96}
    loop_align_method: str = "rounds"  # rounds, or grpo: one instruct GRPO run (trainers/align/grpo.py) instead
    # the loop's instruction-editor DPO leg (trainers/instruct_dpo_loop.py): new labels on instruction-edit sets
    loop_instruct_dpo_labels: int = 0  # new labels that start a DPO run of the instruction editor (0: off)
    loop_instruct_dpo_config: str = ""  # its settings as JSON (trainers/align/dpo.py), e.g. {"steps": 100}
    # the loop's last leg (trainers/label_rounds.py): candidate sets from the served editor, pushed to Label Studio
    loop_label_sets: int = 16  # sets pushed per served editor version (0: the loop makes none)
    loop_label_images: int = 4  # images per set
    loop_label_pool: int = 2  # sets made per set pushed; active selection keeps the best
    loop_label_selection: str = "active"  # active (reward uncertainty and diversity) or random
    loop_label_overlap: int = 2  # annotators per pushed task
    loop_label_gold: int = 2  # gold sets (known answers, editloop/labels/gold.py) mixed into every batch
    loop_label_interval_s: float = 0.0  # also new sets for the same editor this often (0: only when it changes)
    # each image of a set at its own text guidance, cycled ("": all at 4.0): the annotators' best-above-worst
    # ceiling on the base editor's sets is 0.77 varied vs 0.65 same (BENCHMARKS, "A turn of the loop")
    loop_label_guidances: str = "1.0,2.5,4.0,7.0"
    loop_label_when_done: bool = True  # also new sets for the same editor once the last batch is fully labelled
    annotation_web_port: int = 8090  # editloop's webhook receiver and signed image links
    annotation_web_url: str = ""  # how Label Studio and browsers reach it; default http://127.0.0.1:<port>
    link_secret: str = Field(default="", repr=False)  # signs image links; default: a random one in state_dir
    link_ttl_hours: float = 24 * 7
    annotation_project_prefix: str = "editloop"  # Label Studio project titles start with it

    def resolved_annotation_web_url(self) -> str:
        return (self.annotation_web_url or f"http://127.0.0.1:{self.annotation_web_port}").rstrip("/")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir.resolve() / 'editloop.db'}"

    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.state_dir / "blobs"

    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.state_dir.resolve() / 'broker.db'}"

    def resolved_result_backend(self) -> str:
        return self.result_backend or f"db+sqlite:///{self.state_dir.resolve() / 'results.db'}"


def load_settings() -> Settings:
    return Settings()
