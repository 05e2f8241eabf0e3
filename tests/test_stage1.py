"""DPC-KNN and Stage 1 on hand-built features whose answer is known."""
import torch

from prunevid import stage1
from prunevid.dpc_knn import dpc_knn, merge_clusters


def blobs(centres, per, spread=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = [c + spread * torch.randn(per, c.numel(), generator=g) for c in centres]
    return torch.cat(pts)


def test_dpc_knn_finds_well_separated_blobs():
    centres = [torch.tensor([0.0, 0, 0, 0]), torch.tensor([5.0, 0, 0, 0]), torch.tensor([0.0, 5, 0, 0])]
    x = blobs(centres, 10)
    labels, cent = dpc_knn(x[None], 3, 5)
    labels = labels[0]
    for b in range(3):
        assert labels[b * 10:(b + 1) * 10].unique().numel() == 1
    assert labels.unique().numel() == 3
    # each centre is a member of its own cluster, and merging gives the blob means
    assert torch.equal(labels[cent[0]], torch.arange(3))
    merged = merge_clusters(x[None], labels[None], 3)[0]
    for k in range(3):
        assert torch.allclose(merged[k], x[labels == k].mean(0), atol=1e-6)


def test_dpc_knn_is_deterministic_with_ties():
    x = torch.zeros(1, 20, 8)          # every density equal: the index tie break decides
    a = dpc_knn(x, 4, 5)
    b = dpc_knn(x.clone(), 4, 5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    y = torch.randn(3, 50, 16, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(dpc_knn(y, 10, 7), dpc_knn(y, 10, 7)))


def test_dpc_knn_guards_small_inputs():
    labels, cent = dpc_knn(torch.randn(1, 3, 4), 10, 7)   # more clusters and neighbours than points
    assert cent.shape == (1, 3) and sorted(labels[0].tolist()) == [0, 1, 2]
    labels, cent = dpc_knn(torch.randn(2, 1, 4), 1, 5)
    assert labels.shape == (2, 1)


def video_feats(G=8, h=6, w=6, C=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(G, h * w, C, generator=g)


def test_identical_frames_are_all_static():
    frame = video_feats(G=1)[0]
    feats = frame.expand(8, -1, -1).clone()
    out = stage1.merge_video(feats, tau=0.8, cluster_ratio=0.5, temporal_segment_ratio=0.25, k=5)
    assert out.is_static.all()
    assert out.static_ratio == 1.0
    assert out.num_tokens == int(36 * 0.5) * len(out.segments)


def test_scene_cut_gives_two_segments():
    a, b = video_feats(G=1, seed=1)[0], video_feats(G=1, seed=2)[0]
    feats = torch.cat([a.expand(4, -1, -1), b.expand(4, -1, -1)]) + 0.01 * video_feats(G=8, seed=3)
    assert stage1.segment_groups(feats.mean(1), 0.25, 5) == [(0, 4), (4, 8)]
    out = stage1.merge_video(feats, 0.8, 0.5, 0.25, 5)
    assert out.segments == [(0, 4), (4, 8)]


def test_moving_square_is_dynamic_where_it_moves():
    h = w = 6
    bg = video_feats(G=1, h=h, w=w, seed=4)[0]
    square = torch.randn(bg.shape[1], generator=torch.Generator().manual_seed(5)) * 3
    feats = bg.expand(4, -1, -1).clone()
    moving = set()
    for g in range(4):                 # a 1-token square moving along the top row
        feats[g, g] = square + 0.3 * torch.randn(bg.shape[1], generator=torch.Generator().manual_seed(g))
        moving.add(g)
    seg = feats
    mask = stage1.static_mask(seg, tau=0.8)
    assert not mask[list(moving)].any()
    assert mask[[i for i in range(h * w) if i not in moving]].all()


def test_segments_are_contiguous_and_cover_all_groups():
    for seed in range(10):
        feats = video_feats(G=12, seed=seed)
        segs = stage1.segment_groups(feats.mean(1), 0.25, 5)
        assert segs[0][0] == 0 and segs[-1][1] == 12
        assert all(a[1] == b[0] for a, b in zip(segs, segs[1:]))
        assert all(e - s >= 2 for s, e in segs)


def test_refilled_stretch_joins_two_runs_of_one_label_into_one_segment():
    """The authors' rule (audit case): a one-group flash between two runs of A is refilled with A, and segments
    are cut only where the refilled label changes."""
    A, B = 0, 1
    assert stage1.contiguous_segments([A, A, B, A, A, B, B, B]) == [(0, 5), (5, 8)]
    # the same through DPC-KNN: groups 0, 1, 3, 4 look alike, group 2 flashes to what groups 5-7 show
    a, b = video_feats(G=1, seed=11)[0].mean(0), video_feats(G=1, seed=12)[0].mean(0)
    feats = torch.stack([a, a, b, a, a, b, b, b]) + 0.01 * video_feats(G=1, h=1, w=8, seed=13)[0]
    assert stage1.segment_groups(feats, 0.25, 3) == [(0, 5), (5, 8)]


def test_refill_compares_neighbours_as_refilled_so_far():
    A, B, C, D = 0, 1, 2, 3
    # C and D are one-group labels (dissolved). C's stretch ties 2 vs 2 and goes left to A; D's left neighbour is then
    # the five-group A stretch, longer than B's three, so D goes to A too
    assert stage1.contiguous_segments([A, A, C, A, A, D, B, B, B]) == [(0, 6), (6, 9)]
    assert stage1.contiguous_segments([C, A, A, B, B, B]) == [(0, 3), (3, 6)]       # a leading stretch goes right
    assert stage1.contiguous_segments([A, A, B, B, B, C]) == [(0, 2), (2, 6)]       # a trailing one goes left
    assert stage1.contiguous_segments([A, B, C, D]) == [(0, 4)]                     # nothing kept: one segment
    assert stage1.contiguous_segments([A, A, B, B, A, B, B, B]) == [(0, 2), (2, 8)]  # shorter runs are unassigned


def test_provenance_and_representatives_are_consistent():
    feats = video_feats(G=8, h=6, w=6, seed=7)
    feats[:4] = feats[0]               # a static first half
    out = stage1.merge_video(feats, 0.8, 0.5, 0.25, 5)
    assert out.members.shape == (8 * 36,)
    assert out.members.min() == 0 and out.members.max() == out.num_tokens - 1
    # every merged token stands for its representative, and equals the mean of what it stands for (dynamic)
    assert torch.equal(out.members[out.rep_index], torch.arange(out.num_tokens))
    flat = feats.reshape(-1, feats.shape[-1])
    for j in torch.nonzero(~out.is_static).squeeze(1)[:10]:
        assert torch.allclose(out.embeds[j], flat[out.members == j].mean(0), atol=1e-5)
    # within a segment: static block first, then each group's dynamic block, all groups the same size
    assert torch.equal(out.block, out.block.sort().values)


def test_single_group_image_gets_only_spatial_merge():
    feats = video_feats(G=1, h=8, w=8)
    out = stage1.merge_video(feats, 0.8, 0.5, 0.25, 5)
    assert out.segments == [(0, 1)] and not out.is_static.any()
    assert out.num_tokens == 32


def test_small_groups_are_not_clustered():
    feats = video_feats(G=4, h=2, w=3)   # 6 tokens per group <= 14
    out = stage1.merge_video(feats, 0.99, 0.5, 0.25, 5)
    assert out.num_tokens == 4 * 6


def test_stage1_is_deterministic():
    feats = video_feats(G=8, seed=9)
    a = stage1.merge_video(feats, 0.8, 0.5, 0.25, 5)
    b = stage1.merge_video(feats.clone(), 0.8, 0.5, 0.25, 5)
    assert torch.equal(a.embeds, b.embeds) and torch.equal(a.rep_index, b.rep_index)


def test_extra_streams_are_merged_with_the_main_tokens_clusters():
    """DeepStack levels ride along: the same segments, static locations, clusters and averaging as the main tokens
    (a level that is an affine copy of the tokens merges to the same copy of the merged tokens, and a level of
    each token's own index merges to the mean index of exactly the members each merged token stands for); the main
    tokens are byte-identical to a merge without levels."""
    g = torch.Generator().manual_seed(3)
    scenes = torch.randn(2, 1, 20, 16, generator=g).repeat_interleave(3, dim=0)[:, 0]   # two scenes of 3 groups
    feats = scenes + 0.01 * torch.randn(6, 20, 16, generator=g)
    feats[:, 15:] = torch.randn(6, 5, 16, generator=g)                # 5 locations change in every group
    index = torch.arange(6 * 20, dtype=torch.float32).view(6, 20, 1)
    plain = stage1.merge_video(feats, 0.5, 0.5, 0.5, 3)
    both = stage1.merge_video(feats, 0.5, 0.5, 0.5, 3, extras=[3 * feats + 1, index])
    assert torch.equal(both.embeds, plain.embeds) and torch.equal(both.members, plain.members)
    assert both.is_static.any() and len(both.extras) == 2
    assert torch.allclose(both.extras[0], 3 * both.embeds + 1, atol=1e-5)
    for m in range(both.num_tokens):
        members = (both.members == m).nonzero().squeeze(1).float()
        if not both.is_static[m]:            # a dynamic token averages its members' own values
            assert torch.allclose(both.extras[1][m], members.mean(), atol=1e-3)
    off = stage1.unmerged(feats, extras=[index])
    assert torch.equal(off.extras[0][:, 0], torch.arange(120, dtype=torch.float32))
