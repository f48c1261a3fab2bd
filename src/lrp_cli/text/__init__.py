"""Text explanations: scikit-learn text pipelines (this package's sklearn kind) and the output shared by every
text model kind (document.py, render.py, inputs.py).

Entry points: `load_text_model(path)` and `explain_text(model, text)` give a TextExplanation;
`render.write_outputs(explanation, out_dir, stem)` writes STEM.json, STEM.html and STEM.png.
"""
