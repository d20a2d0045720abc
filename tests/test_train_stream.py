"""The trainer's data stream (real Ray Data): every epoch's rows in the data layer's order from the cursor on, each
row's clip made with its own epoch, and blocks of whole batches so clips reach the trainer a few batches at a time."""
import numpy as np
import ray

from sigma_ray.data.clips import ClipMaker, epoch_rows
from sigma_ray.data.config import DataConfig
from sigma_ray.data.pipeline import ClipPipeline
from sigma_ray.train.cursor import DataCursor
from sigma_ray.train.dataset import in_order, rows_per_block, training_stream


def test_blocks_are_the_fewest_whole_batches_that_reach_the_minimum_block_size():
    demo = DataConfig(num_frames=8, input_size=32, decode_short_side=32, patch=8, batch_size=8)
    assert rows_per_block(demo, 2**20) == 48                           # 6 x 196,608 bytes >= 1 MiB > 5 x
    assert rows_per_block(demo, 196_608) == 8 and rows_per_block(demo, 196_609) == 16
    assert rows_per_block(DataConfig(batch_size=8), 2**20) == 8        # 16 x 224 x 224 clips: one batch
    assert rows_per_block(DataConfig(batch_size=8, num_repeats=2, num_frames=8, input_size=32, decode_short_side=32,
                                     patch=8), 2**20) == 24            # two clips per row


def test_the_stream_gives_each_epochs_rows_in_order_from_the_cursor_one_block_per_batch(ray_session,
                                                                                       tiny_synthetic):
    cfg = DataConfig(root=tiny_synthetic["root"], train_list=tiny_synthetic["train"], val_list=tiny_synthetic["val"],
                     num_classes=4, num_frames=4, sampling_rate=2, input_size=32, decode_short_side=32, patch=16,
                     batch_size=4, seed=7, num_actors_max=1, actor_num_cpus=0.25)
    pipeline = ClipPipeline(cfg, "train")
    rows_per_epoch = 20                                   # 24 videos cut to whole batches
    context = ray.data.DataContext.get_current()
    default = context.target_min_block_size
    context.target_min_block_size = 1                     # blocks of one batch
    try:
        ds = training_stream(pipeline, rows_per_epoch, 3, DataCursor.remote(1, 8))
    finally:
        context.target_min_block_size = default
    ds.context.execution_options = in_order()
    done = ds.materialize()
    got = done.take_all()

    expected = [(1, r) for r in epoch_rows(pipeline.records, cfg, "train", 1)[8:rows_per_epoch]]
    expected += [(2, r) for r in epoch_rows(pipeline.records, cfg, "train", 2)[:rows_per_epoch]]
    assert [(int(g["epochs"]), int(g["video_ids"])) for g in got] == [(e, r.video_id) for e, r in expected]
    maker = ClipMaker(cfg, "train")
    for g, (epoch, row) in zip(got[::5], expected[::5]):
        sample = maker(row, epoch)
        np.testing.assert_array_equal(g["clips"], sample.clip)
        np.testing.assert_array_equal(g["masks"], sample.mask)
    assert done.num_blocks() == len(expected) // cfg.batch_size
