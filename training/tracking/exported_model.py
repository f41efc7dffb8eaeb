"""An exported mmtrain model as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(df)`.

MLflow logs this file as the model's code ("models from code": nothing is pickled) with the export
directory as its artifact; `model_config["kind"]` says which transformers class reads it.

  clip  input: a DataFrame with a "text" column (strings) or an "image" column (encoded image
        bytes, or base64 strings of them); output: one L2-normalised embedding per row, as
        transformers' CLIPModel.get_text_features / get_image_features give it.
  llava input: "image" and "question" columns (the question may hold <image>; one is put first
        otherwise); output: the generated answer per row (greedy, `max_new_tokens` from the config).
"""

from __future__ import annotations

import base64
import io

import mlflow
from mlflow.pyfunc import PythonModel


def _image(value):
    from PIL import Image

    data = base64.b64decode(value) if isinstance(value, str) else bytes(value)
    return Image.open(io.BytesIO(data)).convert("RGB")


class ExportedModel(PythonModel):
    def load_context(self, context):
        import transformers

        self.kind = context.model_config["kind"]
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 32))
        directory = context.artifacts["model"]
        model_class = transformers.CLIPModel if self.kind == "clip" else transformers.LlavaForConditionalGeneration
        self.model = model_class.from_pretrained(directory).eval()
        self.processor = transformers.AutoProcessor.from_pretrained(directory)

    def predict(self, context, model_input, params=None):
        import torch

        with torch.inference_mode():
            if self.kind == "clip":
                return self._embed(model_input)
            return [
                self._answer(_image(image), question)
                for image, question in zip(model_input["image"], model_input["question"])
            ]

    def _embed(self, frame):
        import torch

        if "text" in frame:
            inputs = self.processor(text=list(frame["text"]), return_tensors="pt", padding=True)
            features = self.model.get_text_features(**inputs)
        else:
            inputs = self.processor(images=[_image(value) for value in frame["image"]], return_tensors="pt")
            features = self.model.get_image_features(**inputs)
        features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
        return torch.nn.functional.normalize(features, dim=-1).tolist()

    def _answer(self, image, question: str) -> str:
        if "<image>" not in question:
            question = f"<image>\n{question}"
        conversation = [{"role": "user", "content": question}]
        prompt = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(images=[image], text=prompt, return_tensors="pt")
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = output[0, inputs["input_ids"].shape[1] :]
        return self.processor.tokenizer.decode(answer, skip_special_tokens=True)


mlflow.models.set_model(ExportedModel())
