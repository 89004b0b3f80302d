#!/usr/bin/env bash
# FLamby and every package its seven datasets, strategies and utilities import, installed beside
# flamby-mpi into the environment of `python` (the active one), so that the FLamby tests run
# (docs/testing.md). CI runs this (.ci/run); developers run it too, in the environment of
# `pip install -e ".[test]"`.
#
#   scripts/install_flamby_test_extras.sh [FLAMBY]
#
# FLAMBY: a FLamby wheel, or a clone of https://github.com/owkin/FLamby; by default the wheel in
# ../shared/wheels beside this checkout (the project's test fixture). When it is absent this
# prints why and installs nothing (the FLamby tests then skip), except under CI=true, where the
# FLamby tests must run: there an absent FLamby fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
flamby="${1:-$repo/../shared/wheels/flamby-0.0.1-py3-none-any.whl}"

case "${CI:-}" in 1 | true | TRUE | True | yes) under_ci=1 ;; *) under_ci=0 ;; esac
if [ ! -e "$flamby" ]; then
    if [ "$under_ci" = 1 ]; then
        echo "FLamby: $flamby is absent, and CI (CI=$CI) must run the FLamby tests" >&2
        exit 1
    fi
    echo "FLamby: $flamby is absent: not installed, the FLamby tests will skip" \
         "(to run them: git clone https://github.com/owkin/FLamby.git && $0 ./FLamby)"
    exit 0
fi

# What FLamby imports, in one resolve with flamby-mpi itself in it, so that its pins
# (torch>=2.14,<2.15, fedml==0.9.6 and FedML's numpy<2, networkx<3, protobuf<4) hold: pip would
# otherwise upgrade them.
# Each pin here is one that the resolver gets wrong beside FedML 0.9.6 (../shared/wheels/README.md):
# - monai==1.2.0: FLamby's Fed-IXI imports monai.transforms.AddChannel, removed after 1.2;
# - scikit-image<0.23: newer ones require networkx>=3, which FedML refuses;
# - nibabel==3.2.2, nnunet==1.7.0: FLamby's own pins (kits19, lidc);
# - nnunet 1.7.0 requires the retired `sklearn` placeholder, which installs only with
#   SKLEARN_ALLOW_DEPRECATED_SKLEARN_PACKAGE_INSTALL=True;
# - albumentations==1.4.0 (with qudida, which it needs): FLamby's Fed-ISIC2019 training transforms use
#   albumentations.Flip, gone from 1.4.24 on, and 1.4.21 no longer draws the same augmentations
#   from the same seed.
# Fed-Camelyon16's extras (histolab, openslide, transformers, Google's clients) only tile and
# download slides; its dataset class reads feature files and needs none of them.
SKLEARN_ALLOW_DEPRECATED_SKLEARN_PACKAGE_INSTALL=True python -m pip install --quiet -e "$repo" \
    "numpy<2" "networkx<3" \
    pandas scikit-learn scipy seaborn tqdm opacus \
    wget \
    lifelines \
    "monai==1.2.0" "nibabel==3.2.2" \
    "albumentations==1.4.0" qudida efficientnet-pytorch requests \
    batchgenerators "nnunet==1.7.0" \
    dask dicom-numpy pydicom "scikit-image<0.23"
#   ^ base (flamby.utils, strategies, metrics, differential privacy); heart; tcga; ixi; isic2019;
#     kits19; lidc_idri (networkx above)

# FLamby itself, last and without its own requirements: they are unpinned (torch>=1.13.1, any
# numpy...) and name tools it does not import at run time (pre-commit; umap-learn, for one plot).
# What its modules import is the list above. (On a re-run, with FLamby installed, the install above
# ends with pip's note that flamby requires pre-commit and umap-learn: that is this, and harmless.)
python -m pip install --quiet --no-deps "$flamby"

# What the tests import, imported once here, so that a broken install fails this step by name.
python - <<'EOF'
import importlib
for name in ["flamby.utils", "flamby.strategies", "opacus", *(f"flamby.datasets.{d}" for d in (
        "fed_heart_disease", "fed_tcga_brca", "fed_ixi", "fed_isic2019", "fed_camelyon16",
        "fed_kits19", "fed_lidc_idri"))]:
    importlib.import_module(name)
import flamby, torch, numpy
print(f"FLamby installed from {flamby.__path__[0]} with every dataset's extras "
      f"(torch {torch.__version__}, numpy {numpy.__version__})")
EOF
