import pytest

from cryonoo.registry import Registry


def make() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("square")
    def square(size: int = 2) -> int:
        """Area of a square."""
        return size * size

    @reg.register()
    def triangle(base: int = 2, height: int = 3) -> float:
        return base * height / 2

    return reg


def test_register_get_build_names_contains():
    reg = make()
    assert reg.names() == ["square", "triangle"]
    assert "square" in reg and "circle" not in reg
    assert reg.get("square")(3) == 9
    assert reg.build("square", size=4) == 16
    assert reg.build("triangle", base=None, height=4) == 4.0  # None keeps the default
    assert reg.describe("square") == "Area of a square."
    assert len(reg) == 2 and list(reg) == ["square", "triangle"]


def test_build_passes_objects_through():
    reg = make()
    obj = object()
    assert reg.build(obj) is obj


def test_unknown_name_lists_choices():
    reg = make()
    with pytest.raises(KeyError, match=r"unknown widget 'circle'; choose from: square, triangle"):
        reg.get("circle")


def test_duplicate_name_raises():
    reg = make()
    with pytest.raises(KeyError, match="already registered"):
        reg.add("square", lambda: 0)


def test_bad_name():
    reg = make()
    with pytest.raises(ValueError):
        reg.add("", lambda: 0)


def test_plugins_register_through_entry_points(tmp_path, monkeypatch):
    """A package's `cryonoo.plugins` entry point is imported; a broken one warns, by name."""
    from importlib.metadata import EntryPoint

    from cryonoo import registries
    from cryonoo.ssl.augment import AUGMENTERS

    (tmp_path / "my_cryonoo_parts.py").write_text(
        "from cryonoo.ssl.augment import AUGMENTERS\n"
        "@AUGMENTERS.register('plugin-identity', help='a test plug-in')\n"
        "class Identity:\n"
        "    def __init__(self, **kwargs):\n"
        "        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("mine", "my_cryonoo_parts", registries.PLUGIN_GROUP),
        EntryPoint("broken", "no_such_module_here", registries.PLUGIN_GROUP),
    ]
    monkeypatch.setattr(registries, "entry_points", lambda group: points)
    monkeypatch.setattr(registries, "_LOADED", {})
    try:
        with pytest.warns(UserWarning, match="'broken'.*ModuleNotFoundError"):
            status = registries.load_plugins()
        assert status["mine"] == "ok" and "plugin-identity" in AUGMENTERS
        assert "plugin-identity" in registries.all_registries()["AUGMENTERS"]
    finally:
        AUGMENTERS._items.pop("plugin-identity", None)
        AUGMENTERS._help.pop("plugin-identity", None)


def test_accepts_and_build_accepted():
    """Arguments are routed by the factory's signature in one place: the registry."""
    reg = Registry("thing")

    @reg.register("plain")
    def plain(a: int, *, b: int = 2) -> tuple[int, int]:
        return a, b

    @reg.register("open")
    def open_(a: int, **rest: int) -> tuple[int, dict[str, int]]:
        return a, rest

    assert reg.accepts("plain") == {"a", "b"}
    assert reg.accepts("open") is None
    assert reg.build_accepted("plain", a=1, b=3, unused=9) == (1, 3)
    assert reg.build_accepted("open", a=1, c=4) == (1, {"c": 4})
    built = object()
    assert reg.build_accepted(built, a=1) is built
    with pytest.raises(TypeError):
        reg.build("plain", a=1, unused=9)  # plain build passes everything on
