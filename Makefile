# `make demo` and `make test` first create .venv (once) with vitx and everything it needs,
# at the versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vitx-installed

.PHONY: demo test

demo: $(STAMP)
	$(BIN)/vitx explain src/vitx/data/samples/*.png --model shapes-vit --method all --out out/demo
	$(BIN)/vitx explain src/vitx/data/samples/vqa/0_triangle.png src/vitx/data/samples/vqa/12_cross.png \
		src/vitx/data/samples/vqa/4_star.png --model shapes-vqa-dual --method all --out out/demo-vqa \
		--text "what colour is the object left of the triangle?" --text "is there a red cross?" \
		--text "what colour is the star?"
	$(BIN)/vitx explain src/vitx/data/samples/vqa/*.png --model shapes-detr --out out/demo-detr \
		--method generic-attention,raw-attention,rollout,attention-gradcam,partial-lrp,transformer-attribution,saliency
	$(BIN)/vitx explain src/vitx/data/samples/captions/*.png --model shapes-clip --out out/demo-clip \
		--text "a red cross" --text "a blue star" --text "a square" --method generic-attention,legrad,gradcam

test: $(STAMP)
	$(BIN)/python -m pytest -q

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --constraint constraints.txt --editable '.[timm,hf,detection,clip,serve,ray,test]'
	touch $@
