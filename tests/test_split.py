import jax
import numpy as np
import pytest
from flax import nnx

from split_workbench.models import Sequential, make_model, relu
from split_workbench.registry import Registry, SpecError, parse_spec
from split_workbench.split import split


@pytest.fixture(scope="module")
def lenet():
    return make_model("he2019-lenet", key=jax.random.key(0))


def test_cut_by_name_and_index_agree(lenet):
    a, b = split(lenet, "relu2"), split(lenet, 5)
    assert a.cut == b.cut == "relu2" and a.cut_index == b.cut_index == 5
    assert a.smash_shape == (8, 8, 16)
    assert a.param_counts == {"client": 8 * 25 + 8 + 16 * 8 * 25 + 16, "server": 256 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10}


@pytest.mark.parametrize("cut,msg", [("nope", "unknown cut 'nope'"), ("fc3", "after the last block"),
                                     (0, "out of range"), (12, "out of range"), (-1, "out of range")])
def test_bad_cuts_list_the_valid_ones(lenet, cut, msg):
    with pytest.raises(ValueError, match=msg) as e:
        split(lenet, cut)
    assert "1:conv1" in str(e.value) and "relu2" in str(e.value)


def test_bad_cut_type(lenet):
    with pytest.raises(TypeError, match="cut must be"):
        split(lenet, 2.0)


def test_halves_compose_to_the_model(lenet):
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    g, p = nnx.split(lenet, nnx.Param)
    want = nnx.merge(g, p)(x)
    for cut in lenet.cut_points:
        sm = split(lenet, cut)
        np.testing.assert_allclose(sm.apply(sm.params, x), want, rtol=1e-6, atol=1e-6)


def test_flops_add_up(lenet):
    f = split(lenet, "relu2").flops()
    assert f["client_forward"] > 0 and f["server_forward"] > 0
    # the halves' forward FLOPs add up to the whole model's (XLA counts the same ops)
    assert f["client_forward"] + f["server_forward"] == pytest.approx(f["whole_forward"], rel=0.01)
    assert f["client_train"] > f["client_forward"]


def test_pure_callables_and_state_checks():
    seq = [("fc", nnx.Linear(4, 3, rngs=nnx.Rngs(0))), ("relu", relu), ("out", nnx.Linear(3, 2, rngs=nnx.Rngs(1)))]
    sm = split(seq, "relu", input_shape=(4,))
    assert sm.smash_shape == (3,)
    with pytest.raises(ValueError, match="input_shape"):
        split(seq, "relu")
    bn = [("fc", nnx.Linear(4, 3, rngs=nnx.Rngs(0))), ("bn", nnx.BatchNorm(3, rngs=nnx.Rngs(0))),
          ("out", nnx.Linear(3, 2, rngs=nnx.Rngs(1)))]
    with pytest.raises(ValueError, match="GroupNorm"):
        split(bn, "fc", input_shape=(4,))
    with pytest.raises(ValueError, match="unique"):
        Sequential([("a", relu), ("a", relu)])


def test_registry_specs():
    r = Registry("thing")

    @r.register("noise")
    def noise(*, scale: float = 1.0, at: str = "train"):
        return (scale, at)

    assert parse_spec("noise(scale=0.5, at='both')") == ("noise", {"scale": 0.5, "at": "both"})
    assert r.build("noise(scale=0.5)") == (0.5, "train")
    assert r.build("noise") == (1.0, "train")
    with pytest.raises(SpecError, match="registered things: \\['noise'\\]"):
        r.build("nois(scale=1)")
    with pytest.raises(SpecError, match="no parameter\\(s\\) \\['sigma'\\].*scale=1.0"):
        r.build("noise(sigma=1)")
    with pytest.raises(SpecError, match="literal"):
        r.build("noise(scale=foo)")
    with pytest.raises(SpecError, match="by keyword"):
        r.build("noise(1.0)")
    with pytest.raises(ValueError, match="already registered"):
        r.register("noise", noise)
