"""A DataDesigner job in two processes, sharing one limit through Redis.

    .venv/bin/pip install -e '.[demo,datadesigner]'
    .venv/bin/python examples/datadesigner_fleet.py [--url redis://...] [--records 24]

The parent starts the local cold server (capacity 1, warming to 4) and a
Redis, then runs two worker processes. Each generates a small dataset with
DataDesigner's engine (a category column and an LLM text column per record,
answered by the cold server) through its own ``RedisRequestAdmissionController``.
Both register the model with ``max_parallel_requests=4``: DataDesigner's own
controller would let each process send 4 at once (8 in all); the shared one
holds the pair to 4. The summary shows what the server saw.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# DataDesigner reports usage to NVIDIA's telemetry endpoint unless told not to;
# this example talks to nothing but its own loopback servers.
os.environ.setdefault("NEMO_TELEMETRY_ENABLED", "false")

MODEL, PROVIDER, MAX_PARALLEL = "cold-model", "local", 4


def work(redis_url: str, server_url: str, records: int, namespace: str) -> None:
    """One worker process: a DataDesigner generation of ``records`` records."""
    from data_designer.config.column_configs import LLMTextColumnConfig, SamplerColumnConfig
    from data_designer.config.config_builder import DataDesignerConfigBuilder
    from data_designer.config.models import ChatCompletionInferenceParams, ModelConfig, ModelProvider
    from data_designer.config.sampler_params import CategorySamplerParams
    from data_designer.engine.dataset_builders.dataset_builder import DatasetBuilder
    from data_designer.engine.model_provider import resolve_model_provider_registry
    from data_designer.engine.resources.resource_provider import create_resource_provider
    from data_designer.engine.resources.seed_reader import SeedReaderRegistry
    from data_designer.engine.secret_resolver import PlaintextResolver
    from data_designer.engine.storage.artifact_storage import ArtifactStorage

    from aimd_redis import ThrottleConfig
    from aimd_redis.datadesigner import RedisRequestAdmissionController

    model = ModelConfig(
        alias="writer",
        model=MODEL,
        provider=PROVIDER,
        inference_parameters=ChatCompletionInferenceParams(max_parallel_requests=MAX_PARALLEL),
        skip_health_check=True,
    )
    builder = DataDesignerConfigBuilder(model_configs=[model])
    builder.add_column(
        SamplerColumnConfig(
            name="topic", sampler_type="category", params=CategorySamplerParams(values=["tides", "bees", "glass"])
        )
    )
    builder.add_column(
        LLMTextColumnConfig(name="note", prompt="Write one line about {{ topic }}.", model_alias="writer")
    )
    # Every process of the job gives DataDesigner a controller on the same Redis and namespace.
    config = ThrottleConfig(rampup_seconds=2, cooldown_seconds=0.5)
    with (
        RedisRequestAdmissionController(redis_url, namespace=namespace, config=config) as admission,
        tempfile.TemporaryDirectory() as artifacts,
    ):
        resources = create_resource_provider(
            artifact_storage=ArtifactStorage(artifact_path=artifacts),
            model_configs=builder.model_configs,
            secret_resolver=PlaintextResolver(),
            model_provider_registry=resolve_model_provider_registry(
                [ModelProvider(name=PROVIDER, endpoint=f"{server_url}/v1", api_key="not-needed")]
            ),
            seed_reader_registry=SeedReaderRegistry(readers=[]),
            request_admission=admission,
        )
        dataset = DatasetBuilder(data_designer_config=builder.build(), resource_provider=resources).build_preview(
            num_records=records
        )
        filled = int(dataset["note"].notna().sum())
        print(f"worker: {len(dataset)} records, {filled} notes written", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: a private one)")
    parser.add_argument("--records", type=int, default=24, help="records per worker")
    parser.add_argument("--worker", nargs=3, metavar=("REDIS_URL", "SERVER_URL", "NAMESPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        redis_url, server_url, namespace = args.worker
        work(redis_url, server_url, args.records, namespace)
        return

    from aimd_redis.demo.coldserver import ColdServer, ServerSettings
    from aimd_redis.demo.embedded import EmbeddedRedis

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(EmbeddedRedis()).url
        settings = ServerSettings(peak=MAX_PARALLEL, warmup_seconds=2, service_seconds=0.05, retry_after_seconds=0.2)
        server = stack.enter_context(ColdServer(settings))
        namespace = f"dd-example-{Path(tempfile.mktemp()).name}"
        print(f"two workers x {args.records} records against {server.url} (capacity 1 warming to {MAX_PARALLEL})")
        command = [sys.executable, __file__, "--records", str(args.records), "--worker", url, server.url, namespace]
        workers = [subprocess.Popen(command) for _ in range(2)]
        codes = [w.wait() for w in workers]
        stats = server.stats()
        print(
            f"server: {stats.requests} requests, {stats.served} served, {stats.rejected} refused (429), "
            f"at most {stats.max_concurrency} at once for a shared limit of {MAX_PARALLEL}"
        )
        if any(codes):
            sys.exit(f"a worker failed: exit codes {codes}")


if __name__ == "__main__":
    main()
