"""Stand-in for transformers' `tests/utils/test_configuration_utils.py` (not in the sdist): `config_common_kwargs`.

`ConfigTester.check_config_arguments_init` builds a config from these and checks that every one is kept. They are the
fields every `PreTrainedConfig` has, each set to a value other than its default, so a config that overwrites or drops a
base field fails.
"""
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["HubzooTestModel"],
    "id2label": {0: "negative", 1: "positive"},
    "label2id": {"negative": 0, "positive": 1},
    "problem_type": "regression",
}
