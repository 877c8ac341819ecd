# ztaudit developer entry points. `make demo` and `make test` are the two commands a new machine needs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
LAKE    ?= demo-lake

.PHONY: demo spark-demo test test-fast lint typecheck bench kafka system-deps clean install lock realstack

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

## make demo: sample logs -> lake -> detect -> report, no Kafka needed.
demo: $(STAMP)
	$(BIN)/ztaudit demo --lake $(LAKE)

## make spark-demo: the demo lake as Iceberg, detect on Spark local[2] (scripts/spark-demo), then a report.
spark-demo: $(STAMP)
	scripts/spark-demo $(LAKE)-spark

## make test: every test, against a real Kafka broker that scripts/kafka-broker starts and stops and
## the real kube-apiserver/Pomerium/Keycloak stack (built once into ~/.cache/ztaudit/realstack, 8-10 min cold).
test: $(STAMP) system-deps realstack
	scripts/run-tests

## make realstack: build or reuse the real stack's binaries (scripts/realstack build).
realstack:
	scripts/realstack build >/dev/null

## make test-fast: everything that needs neither the broker, the browser, the real stack, S3Proxy, PostgreSQL nor Spark.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not kafka and not browser and not realstack and not s3 and not postgres and not spark" -q

lint: $(STAMP)
	$(BIN)/ruff check core pipeline detectors reports synth cli tests bench scripts notebooks
	scripts/typecheck

typecheck: lint

## make lock: re-resolve the newest allowed versions into constraints.txt (then make test, commit both).
lock:
	scripts/lock

system-deps:
	scripts/system-deps

bench: $(STAMP) system-deps
	$(BIN)/python bench/ingest.py
	scripts/with-kafka $(BIN)/python bench/consume.py
	$(BIN)/python bench/detect.py
	$(BIN)/python bench/reach.py
	$(BIN)/python bench/report.py

## make kafka: a local broker on 127.0.0.1:9092 for trying `ztaudit consume` by hand (Ctrl-C stops it).
kafka:
	scripts/kafka-broker run --port 9092

clean:
	rm -rf $(LAKE) .pytest_cache build *.egg-info
