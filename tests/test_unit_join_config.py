"""flamby_mpi/launch/join_config.py: what separately started ranks must agree on, key by key."""
from flamby_mpi.config import load_config
from flamby_mpi.launch import join_config
from support.mpi import DEFAULT_CONFIG


def _yaml(*overrides):
    return load_config(str(DEFAULT_CONFIG), list(overrides)).to_yaml()


def test_the_same_config_gives_the_same_fingerprint_of_one_digest_per_agreed_key():
    names = join_config.key_names(_yaml())
    assert len(join_config.fingerprint(_yaml())) == join_config.DIGEST_HEX * len(names)
    assert join_config.fingerprint(_yaml()) == join_config.fingerprint(_yaml())
    assert "train_args.comm_round" in names and not join_config.PER_RANK_KEYS & set(names)


def test_a_rank_s_own_log_level_waits_and_rendezvous_paths_need_not_agree():
    mine = _yaml("tracking_args.log_level=debug", "comm_args.round_timeout_s=999", "comm_args.join_timeout_s=60",
                 "comm_args.rendezvous_dir=/mnt/elsewhere", "comm_args.secret_file=/mnt/elsewhere/s")
    assert join_config.fingerprint(mine) == join_config.fingerprint(_yaml())


def test_the_keys_that_differ_are_named_in_the_refusal():
    server = _yaml()
    names, own = join_config.key_names(server), join_config.fingerprint(server)
    client = join_config.fingerprint(_yaml("train_args.comm_round=7", "data_args.data_path=/elsewhere"))
    assert join_config.differing_keys(names, own, client) == ["data_args.data_path", "train_args.comm_round"]
    assert join_config.refusal(names, own, client) == (
        "its configuration differs from the server's in data_args.data_path, train_args.comm_round "
        "(the same --cf and --set on every rank)")


def test_many_keys_are_cut_short_and_a_fingerprint_of_another_shape_is_not_read():
    names = [f"s.k{i}" for i in range(10)]
    own = "0" * 8 * 10
    refused = join_config.refusal(names, own, "1" * 8 * 10)
    assert refused.endswith("s.k4, s.k5 and 4 more (the same --cf and --set on every rank)"), refused
    for other in ("", "0" * 16, own + "00000000"):  # another version's fingerprint, or garbage
        assert join_config.differing_keys(names, own, other) is None
        assert "another flamby-mpi version" in join_config.refusal(names, own, other)
