"""The package's layering: lower layers never import higher ones (README, Development)."""

import ast
from pathlib import Path

import ndvq

PACKAGE = Path(ndvq.__file__).parent
# Lowest first. A module may import its own layer and those below; a name not listed is the core layer (codec,
# bitstream, audio...). Training sits above evaluation: its validation scores with the evaluation's metrics.
LAYERS = [
    {"ndvq.errors", "ndvq.chunking", "ndvq.modules"},
    {"ndvq.quantization"},
    {"core"},
    {"ndvq.eval"},
    {"ndvq.train"},
    {"ndvq.cli", "ndvq.__main__"},
]


def layer(module: str) -> tuple[int, str]:
    """A dotted module name -> (its layer's rank, the layer's name)."""
    for rank, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                return rank, name
    return LAYERS.index({"core"}), "core"


def imports(path: Path) -> set[str]:
    """The ndvq modules a source file imports (`from ndvq import x` counts as ndvq.x when x is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ndvq")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ndvq"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                file = PACKAGE.parent / submodule.replace(".", "/")
                is_module = file.with_suffix(".py").exists() or (file / "__init__.py").exists()
                found.add(submodule if is_module else node.module)
    return found


def test_no_module_imports_a_higher_layer() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        rank, _ = layer(module)
        for imported in imports(path):
            if imported == "ndvq":
                imported = "core"  # the public API: Codec, compress, ...
            imported_rank, _ = layer(imported)
            if imported_rank > rank:
                violations.append(f"{module} imports {imported}")
    assert violations == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("from ndvq.train.trainer import Trainer\nfrom ndvq import pretrained, NdvqError\nimport ndvq.cli")
    assert imports(source) == {"ndvq.train.trainer", "ndvq.pretrained", "ndvq", "ndvq.cli"}
    assert layer("ndvq.train.trainer")[0] > layer("ndvq.eval.compare")[0] > layer("ndvq.codec")[0]
    assert layer("ndvq.quantization.usage")[0] < layer("ndvq.codec")[0]
