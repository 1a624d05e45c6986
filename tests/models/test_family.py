"""The model-family layer: one place per family; outside the family files no module names a family's
classes or imports a family module (the passes, lowering, serialization, CLI and report read the
family spec)."""

import ast
from pathlib import Path

import pytest
import torch

import ptq4vm_fx
from ptq4vm_fx.errors import InputError
from ptq4vm_fx.models.family import FAMILIES, create_model, family_of, family_of_name, model_names

PACKAGE = Path(ptq4vm_fx.__file__).parent
FAMILY_FILES = {"models"}  # the model package holds the family files (and the family layer itself)


def _family_names() -> set[str]:
    names = set()
    for family in FAMILIES.values():
        for cls in (family.model_class, *family.block_classes, *family.leaf_classes, *family.fold_norms):
            names.add(cls.__name__)
    return names


def _identifiers_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    identifiers, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            identifiers.add(node.id)
        elif isinstance(node, ast.Attribute):
            identifiers.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
            identifiers.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return identifiers, modules


def test_no_module_outside_the_family_files_names_a_family_class():
    family_classes = _family_names()
    assert {"VisionMamba", "Block", "RMSNorm"} <= family_classes
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in FAMILY_FILES:
            continue
        identifiers, modules = _identifiers_and_imports(path)
        named = sorted(identifiers & family_classes)
        family_modules = sorted(m for m in modules if m.split(".")[-1] in ("vim", "vmamba", "localmamba", "zoo"))
        if named or family_modules:
            offenders.append(f"{relative}: {named + family_modules}")
    assert offenders == []


def test_the_check_can_fail():
    """The scan above finds a family class where one is named."""
    identifiers, _ = _identifiers_and_imports(PACKAGE / "models" / "zoo.py")
    assert "VisionMamba" in identifiers & _family_names()


def test_every_registered_name_resolves_to_its_family():
    assert "vim" in FAMILIES
    for name in model_names():
        assert family_of_name(name) is FAMILIES[family_of_name(name).name]
    with pytest.raises(InputError, match="unknown model 'resnet50'"):
        family_of_name("resnet50")


def test_family_of_a_model_and_of_something_else():
    with torch.device("meta"):
        model = create_model("vim_tiny_patch16_224", depth=2)
    assert family_of(model).name == "vim"
    with pytest.raises(InputError, match="unsupported model Linear"):
        family_of(torch.nn.Linear(2, 2))
