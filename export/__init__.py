"""simx.export: build DINOv2 / OpenCLIP towers in torch and write verified ONNX files.

Needs the ``export`` extra (torch, timm, open_clip, onnx). The runtime never imports this.
"""
