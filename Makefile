# Every target bootstraps the virtualenv it needs from requirements.lock (the tested set).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
DAGSTER_HOME ?= $(abspath $(DATA)/dagster_home)
UI_PORT ?= 3000

.PHONY: demo readme test style ui bench calibration lock clean

$(BIN)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(DAGSTER_HOME)/dagster.yaml: pipelines/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp pipelines/dagster.yaml $@

demo: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml  ## write both demo sites and run the whole pipeline on each
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/batchtwin demo --data-dir $(DATA)
	mkdir -p $(DATA)/penicillin/dagster_home && cp pipelines/dagster.yaml $(DATA)/penicillin/dagster_home/
	DAGSTER_HOME=$(abspath $(DATA)/penicillin/dagster_home) $(BIN)/batchtwin demo --site penicillin --data-dir $(DATA)/penicillin

readme: $(BIN)/.installed  ## regenerate the README's demo outputs from the lakes of `make demo`
	$(BIN)/python -m demo.readme $(DATA)

LIBRARY := sources schemas lake models pipelines demo

test: $(BIN)/.installed  ## house style (ruff lint and format, mypy), then the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(addprefix -p ,$(LIBRARY))
	$(BIN)/python -m pytest -q -n auto --dist loadfile  # a worker per core; files stay whole

style: $(BIN)/.installed  ## apply the formatter and the linter's safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: $(BIN)/.installed $(DAGSTER_HOME)/dagster.yaml  ## Dagster UI and daemon (sensors, schedules) on 127.0.0.1
	DAGSTER_HOME=$(DAGSTER_HOME) BATCHTWIN_LAKE=$${BATCHTWIN_LAKE:-$(abspath $(DATA)/lake)} \
	  BATCHTWIN_LANDING=$${BATCHTWIN_LANDING:-$(abspath $(DATA)/landing)} \
	  $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

lock:  ## re-resolve the locked set after changing pyproject.toml dependencies
	rm -rf /tmp/batchtwin-lock && $(PYTHON) -m venv /tmp/batchtwin-lock
	/tmp/batchtwin-lock/bin/pip install --quiet --upgrade pip
	/tmp/batchtwin-lock/bin/pip install --quiet -e ".[test]"
	/tmp/batchtwin-lock/bin/pip freeze --exclude-editable | grep -v '^batchtwin' > requirements.lock

clean:
	rm -rf $(DATA) $(VENV)

bench: $(BIN)/.installed  ## benchmarks against the bare engines (large data; ~20 minutes)
	$(BIN)/python -m bench.run

calibration: $(BIN)/.installed  ## do the fits' 95 % intervals hold the truth? (12 plants per demo site, two at a time)
	$(BIN)/python -m bench.calibration --site cho --jobs 2
	$(BIN)/python -m bench.calibration --site penicillin --jobs 2
