# onlineanyseg_ros developer entry points. `make demo` and `make test` each set up .venv on a
# fresh machine (pinned requirements; ROS 2 wheels only when no ROS 2 install is sourced).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.onlineanyseg-installed
DEMO_DIR ?= demo_output

# Every process that starts rclpy stays on loopback and on its own random domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell echo $$((RANDOM % 200 + 1)))
export PYTHONUNBUFFERED := 1

# With a sourced ROS 2 (ROS_DISTRO set) the venv sees the system rclpy and messages.
ifdef ROS_DISTRO
VENV_FLAGS := --system-site-packages
ROS_REQUIREMENTS :=
else
VENV_FLAGS :=
ROS_REQUIREMENTS := -r requirements/ros.txt
endif

.PHONY: help setup demo test lint clean

help:
	@echo 'make demo   - set up .venv and run the embedded default end to end (CPU, no weights)'
	@echo 'make test   - set up .venv and run the test suite'
	@echo 'make lint   - flake8 over the package, tests, benchmarks and tools'

setup: $(STAMP)

$(STAMP): requirements/base.txt requirements/test.txt requirements/ros.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q -r requirements/base.txt -r requirements/test.txt \
		$(ROS_REQUIREMENTS) > $(VENV)/pip-install.log 2>&1 || \
		{ grep -v '^WARNING: Location' $(VENV)/pip-install.log; exit 1; }
	$(PY) -c 'import torch, numpy, rosbags, rclpy' || \
		{ echo 'dependency install failed: see pip output above'; exit 1; }
	if [ -z "$$ROS_DISTRO" ] && [ -f tools/build_tf2_msgs.sh ]; then \
		bash tools/build_tf2_msgs.sh $(VENV); fi
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m onlineanyseg_ros.cli demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m flake8 onlineanyseg_ros test benchmarks tools launch

clean:
	rm -rf $(DEMO_DIR) build install log
