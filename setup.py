from setuptools import find_packages, setup

setup(
    name="ltdet",
    version="0.1.0",
    description="Long-tailed instance segmentation for detectron2: Balanced Softmax, balanced "
    "sigmoid, Meta Reweigher (BALMS), decoupled fine-tuning and LVIS evaluation",
    packages=find_packages(include=("ltdet", "ltdet.*")),
    python_requires=">=3.10",  # the pinned torch 2.14.1 needs 3.10
    # torch.func (the meta look-ahead) needs torch >= 2.0. detectron2 is not on PyPI: whatever
    # detectron2 the user has satisfies ltdet (tools/install.sh installs one when there is none).
    install_requires=["torch>=2.0", "torchvision", "fvcore", "pycocotools", "lvis", "matplotlib"],
)
