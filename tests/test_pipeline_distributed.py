"""MirroredStrategy on 2 logical CPUs (in a subprocess: logical devices must be set before TF
initializes) feeding build_dataset through distribute_datasets_from_function."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from efficientnet_tf.data import convert

from fmnist import FMNIST, needs_fashion_mnist, require

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory):
    require()
    out = str(tmp_path_factory.mktemp("fm"))
    convert.convert_idx(FMNIST, out, max_examples=64, train_shards=4, validation_shards=2,
                        progress=False)
    return out


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from efficientnet_tf.data.pipeline import DataConfig, build_dataset
    config = DataConfig(data_dir=sys.argv[1], image_size=28, num_classes=10, crop_padding=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    calls = []
    def fn(ctx):
        calls.append((ctx.num_input_pipelines, ctx.input_pipeline_id, ctx.num_replicas_in_sync))
        return build_dataset(config, "train", 8, input_context=ctx)
    dist = strategy.distribute_datasets_from_function(fn)
    out = {"calls": calls, "spec": [str(s.shape) for s in tf.nest.flatten(dist.element_spec, expand_composites=True)], "steps": []}
    it = iter(dist)
    for _ in range(3):
        x, y = next(it)
        xs, ys = strategy.experimental_local_results(x), strategy.experimental_local_results(y)
        out["steps"].append({"shapes": [list(t.shape) for t in xs], "devices": [t.device for t in xs],
                             "sums": [float(tf.reduce_sum(t)) for t in xs],
                             "labels": [t.numpy().tolist() for t in ys]})
    print("RESULT" + json.dumps(out))
""")


def test_mirrored_strategy_two_cpus_gets_distinct_static_per_replica_batches(fm_dir, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(script), fm_dir], capture_output=True, text=True,
                          env=env, timeout=180, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["calls"] == [[1, 0, 2]]  # one worker feeding two replicas
    # static per-replica specs: images and labels for each of the 2 replicas
    assert sorted(out["spec"]) == ["(4, 28, 28, 3)"] * 2 + ["(4,)"] * 2
    sums = []
    for step in out["steps"]:
        assert step["shapes"] == [[4, 28, 28, 3], [4, 28, 28, 3]]
        assert len(set(step["devices"])) == 2
        assert step["sums"][0] != step["sums"][1]
        sums += step["sums"]
    assert len(set(sums)) == len(sums)  # no batch repeated across replicas or steps
