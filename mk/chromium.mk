# Headless Chromium for the status page's browser test (tests/e2e/test_admin.py).
STAMP_CHROMIUM := target/.chromium-installed
SETUP_EXTRA += $(STAMP_CHROMIUM)

$(STAMP_CHROMIUM):
	command -v chromium >/dev/null || (apt-get install -y chromium || (apt-get update && apt-get install -y chromium))
	mkdir -p target && touch $@
