# Sourced by the fixture scripts (llama-, vllm-, phoenix-fixture.sh): where the
# test fixtures are cached, outside the clone. Sets `cache`:
# $LLMVISOR_TEST_CACHE, else /var/cache/llmvisor-test as root, else
# ${XDG_CACHE_HOME:-~/.cache}/llmvisor-test. tests/llama_fixture/mod.rs
# (`cache_dir`) follows the same rules.
if [ -n "${LLMVISOR_TEST_CACHE:-}" ]; then
  cache=$LLMVISOR_TEST_CACHE
elif [ "$(id -u)" = 0 ]; then
  cache=/var/cache/llmvisor-test
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/llmvisor-test
fi
