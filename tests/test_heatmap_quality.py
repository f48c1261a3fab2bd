"""Heatmap quality on the bundled shapes-cnn: positive relevance falls on the object, far above chance.

Measured (60 generated test images, seed 1, default composite epsilon-plus-flat, true class explained): 0.376 of
the positive relevance lies inside the object mask, whose mean area is 0.103 of the image (chance level), so
3.6x chance; the rest sits mostly on the shapes' outer edges, just outside the mask. The bar, 0.30 and 2.5x the
area fraction, leaves room for platform rounding while failing any explanation that spreads relevance over the
cluttered background.
"""

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from lrp_cli import api
from lrp_cli.preprocess import image_to_tensor
from lrp_cli.synthetic.shapes import make_dataset

MODEL = REPO / "models" / "shapes-cnn.onnx"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["numpy", "onnxruntime"])
def test_positive_relevance_lies_on_the_object(engine):
    model = api.load_model(MODEL)
    images, masks, labels = make_dataset(60, seed=1)
    inside, area = [], []
    for image, mask, label in zip(images, masks, labels):
        x = image_to_tensor(Image.fromarray(image), model.sidecar.preprocess, model.graph.input_shape)
        expl = api.explain_array(model, x, api.Settings(target=str(label), engine=engine))[0]
        assert expl.extra["engine"] == engine
        positive = np.maximum(expl.relevance[0].sum(axis=0), 0)
        inside.append(positive[mask].sum() / max(positive.sum(), 1e-12))
        area.append(mask.mean())
    assert np.mean(inside) > 0.30
    assert np.mean(inside) > 2.5 * np.mean(area)
