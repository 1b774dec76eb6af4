import pytest

from service.registry import InvalidArguments, JobRegistry, UnknownJob


@pytest.fixture(scope="module")
def registry():
    return JobRegistry.from_package("jobs")


def test_lists_public_functions_of_job_modules_by_module_and_name(registry):
    names = {spec.name for spec in registry}
    assert {"demo.add", "demo.sleep", "demo.fail", "demo.tick"} <= names
    assert registry.get("demo.add").path == "jobs.demo.add"


def test_leaves_out_imported_and_private_names(registry):
    names = {spec.name for spec in registry}
    # jobs/demo.py imports `time`; module attributes that are not functions
    # written there are not jobs.
    assert not any(name.startswith("demo.time") for name in names)
    assert all(not name.split(".")[1].startswith("_") for name in names)


@pytest.mark.parametrize(
    "name",
    ["os.system", "subprocess.run", "builtins.eval", "demo.nope", "../x", "jobs.demo.add", "demo", "", "demo.add "],
)
def test_rejects_names_outside_the_allow_list(registry, name):
    with pytest.raises(UnknownJob):
        registry.get(name)


def test_validates_arguments_against_the_signature(registry):
    spec = registry.get("demo.add")
    assert spec.validate([1, 2], {}) == ([], {"x": 1, "y": 2})
    assert spec.validate([1], {"y": 2.5}) == ([], {"x": 1, "y": 2.5})


@pytest.mark.parametrize(
    "args, kwargs, argument",
    [([1], {}, "y"), ([1, 2], {"z": 3}, "z"), (["a", 2], {}, "x"), ([1, 2, 3], {}, "*")],
)
def test_names_the_bad_argument(registry, args, kwargs, argument):
    with pytest.raises(InvalidArguments) as caught:
        registry.get("demo.add").validate(args, kwargs)
    assert [p["argument"] for p in caught.value.problems] == [argument]


def test_describes_parameters_as_json_schema(registry):
    schema = registry.get("demo.sleep").parameters_schema()
    assert schema["required"] == ["seconds"]
    assert schema["properties"]["seconds"]["type"] == "number"
