# The two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench xvfb

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/evstream demo

test: $(STAMP) xvfb
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The viewer's window test runs under Xvfb: install it when missing and we may (root + apt);
# otherwise that one test is skipped with the reason.
xvfb:
	@command -v Xvfb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -q xvfb >/dev/null 2>&1 \
	       || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q xvfb >/dev/null 2>&1; }; }; } \
	  || echo "Xvfb is not available: the viewer window test will be skipped"

bench: $(STAMP)
	$(PIP) -e ".[test,bench]"
	for b in io voxel pipeline sim e2e train; do $(VENV)/bin/evstream bench $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
