"""Staging refuses a run whose files hold a Hugging Face token, and writes nothing."""

import json

from .conftest import A_TOKEN, FID, TAG, make_run, push


def test_a_token_in_a_run_file_is_refused_and_nothing_is_written(
    tmp_path, tiny_recipe, monkeypatch
):
    run = make_run(tmp_path, tiny_recipe)
    recipe_toml = run / "export" / "recipe.toml"
    recipe_toml.write_text(recipe_toml.read_text() + f"# pushed with {A_TOKEN}\n")
    out = push("--run", str(run), "--dry-run", str(tmp_path / "staged"))
    assert out.exit_code == 2
    error = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert error == [
        f"error: {recipe_toml}: holds a Hugging Face access token; refusing to publish it "
        "(remove the token from that file, and revoke it if it was ever shared)"
    ]
    assert A_TOKEN not in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no DIR, no staging left

    # the current token, whatever it looks like, found in a file that only feeds the card
    recipe_toml.write_text(recipe_toml.read_text().replace(A_TOKEN, ""))
    secret = "s3cret-value-of-hf-token"
    monkeypatch.setenv("HF_TOKEN", secret)
    eval_fid = run / "samples" / TAG / "eval-fid.json"
    eval_fid.write_text(json.dumps({"metrics": FID, "reference": f"/data/{secret}.npz"}))
    out = push("--run", str(run), "--dry-run", str(tmp_path / "staged"))
    assert out.exit_code == 2 and f"error: {eval_fid}: holds a Hugging Face" in out.output
    assert secret not in out.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
