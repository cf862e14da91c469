# Shortcuts; the README's two commands are the reference.
.PHONY: install reproduce reproduce-quick reproduce-paper test lint benchmark

install:
	python -m pip install torch==2.14.1 torchvision==0.29.1
	python -m pip install -e ".[dev]"

reproduce:          ## offline smoke reproduction of every notebook (CPU, minutes)
	python -m uniq reproduce --profile smoke

reproduce-quick:    ## real CIFAR-100, shortened schedules, one GPU
	python -m uniq reproduce --profile quick --keep-going

reproduce-paper:    ## the paper's schedules
	python -m uniq reproduce --profile paper --keep-going

test:
	python -m pytest

lint:
	ruff check .

benchmark:
	python benchmarks/train_step.py
