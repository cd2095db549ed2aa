"""Tokenization: vocabularies, gene matching, count checks and vectorised encoding on real counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import biomed_toolkit.rna as rna
from biomed_toolkit.core.errors import GeneMatchError, InputError
from biomed_toolkit.rna.tokenize import CLS_ID, PAD_ID, SEP_ID


@pytest.fixture(scope="module")
def pbmc():
    return rna.pbmc68k_counts()


@pytest.fixture(scope="module")
def tok(pbmc):
    # vocabulary: the pbmc genes in reverse alphabetical order, plus a few absent ones
    genes = sorted(pbmc.var_names, reverse=True)[:600] + ["NOT_IN_DATA1", "NOT_IN_DATA2"]
    return rna.GeneTokenizer.from_genes(genes)


def reference_encode(counts_row, names, tok, max_length, limit_pc=True):
    """Per-cell reference written from the official description (slow, obviously correct)."""
    pc = rna.protein_coding_symbols()
    kept = [(n, float(c)) for n, c in zip(names, counts_row)
            if n in tok and (not limit_pc or n in pc)]
    seen, uniq = set(), []
    for n, c in kept:
        if n not in seen:
            seen.add(n)
            uniq.append((n, c))
    total = sum(c for _, c in uniq)
    nz = [(n, c) for n, c in uniq if c != 0][: max_length - 2]
    ids = [CLS_ID] + [int(tok.gene_ids([n])[0]) for n, _ in nz] + [SEP_ID]
    vals = [-4.0] + [float(np.float32(np.log1p(c / (total + 1) * 1e4))) for _, c in nz] + [-2.0]
    return ids, vals


def test_encode_matches_per_cell_reference_with_truncation(pbmc, tok):
    sub = pbmc[:40]
    enc = rna.encode_cells(sub, tok, max_length=64)
    dense = sub.X.toarray()
    names = list(sub.var_names)
    assert (enc.n_expressed > 62).any(), "truncation must be exercised"
    for i in range(sub.n_obs):
        ids, vals = reference_encode(dense[i], names, tok, 64)
        n = len(ids)
        assert enc.lengths[i] == n
        assert enc.genes[i, :n].tolist() == ids
        np.testing.assert_array_equal(enc.expressions[i, :n], np.asarray(vals, dtype=np.float32))
        assert (enc.genes[i, n:] == PAD_ID).all() and (enc.expressions[i, n:] == -3.0).all()
        assert enc.attention_mask[i, :n].all() and not enc.attention_mask[i, n:].any()
    assert enc.genes.shape[1] == 64 and enc.genes.dtype == np.int64
    assert enc.expressions.dtype == np.float32


def test_random_order_is_seeded_and_chunk_invariant(pbmc, tok):
    full = rna.encode_cells(pbmc[:30], tok, order="random", seed=3, max_length=2048)
    part = rna.encode_cells(pbmc[10:20], tok, order="random", seed=3, max_length=2048, cell_offset=10)
    w = part.genes.shape[1]
    np.testing.assert_array_equal(full.genes[10:20, :w], part.genes)
    np.testing.assert_array_equal(full.expressions[10:20, :w], part.expressions)
    other = rna.encode_cells(pbmc[:30], tok, order="random", seed=4, max_length=2048)
    assert not np.array_equal(full.genes, other.genes)
    official = rna.encode_cells(pbmc[:30], tok, max_length=2048)
    for i in range(30):  # same genes and values, only permuted
        n = official.lengths[i]
        a = sorted(zip(official.genes[i, 1:n - 1], official.expressions[i, 1:n - 1]))
        b = sorted(zip(full.genes[i, 1:n - 1], full.expressions[i, 1:n - 1]))
        assert a == b
    assert not np.array_equal(official.genes, full.genes)


def test_rank_order_puts_highest_counts_first(pbmc, tok):
    enc = rna.encode_cells(pbmc[:25], tok, order="rank", max_length=32)
    for i in range(25):
        n = enc.lengths[i]
        v = enc.expressions[i, 1:n - 1]
        assert (np.diff(v) <= 0).all()
    full = rna.encode_cells(pbmc[:25], tok, max_length=4096)
    for i in range(25):  # truncation kept the top-30 values
        n = full.lengths[i]
        top = np.sort(full.expressions[i, 1:n - 1])[::-1][:30]
        np.testing.assert_array_equal(np.sort(enc.expressions[i, 1:enc.lengths[i] - 1])[::-1], top[:enc.lengths[i] - 2])


def test_counts_validation():
    tok = rna.GeneTokenizer.from_genes(["CD3E", "LYZ", "MS4A1"])
    genes = ["CD3E", "LYZ", "MS4A1"]
    X = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 1.5, 3.0]], dtype=np.float32))
    with pytest.raises(InputError, match="non-integer.*allow_non_integer"):
        rna.encode_cells(X, tok, genes=genes)
    enc = rna.encode_cells(X, tok, genes=genes, allow_non_integer=True)
    assert enc.lengths.tolist() == [4, 4]
    neg = sp.csr_matrix(np.array([[1.0, -2.0, 0.0]], dtype=np.float32))
    with pytest.raises(InputError, match="negative"):
        rna.encode_cells(neg, tok, genes=genes, allow_non_integer=True)
    nan = sp.csr_matrix(np.array([[1.0, np.nan, 0.0]], dtype=np.float32))
    with pytest.raises(InputError, match="non-finite"):
        rna.encode_cells(nan, tok, genes=genes, allow_non_integer=True)
    # dense numpy input behaves the same
    with pytest.raises(InputError, match="non-integer"):
        rna.encode_cells(X.toarray(), tok, genes=genes)


def test_empty_cells_are_reported(pbmc, tok):
    sub = pbmc[:6].copy()
    X = sub.X.tolil()
    X[2, :] = 0
    sub.X = X.tocsr()
    sub.X.eliminate_zeros()
    enc = rna.encode_cells(sub, tok)
    assert enc.empty.tolist() == [False, False, True, False, False, False]
    assert enc.n_expressed[2] == 0 and enc.lengths[2] == 2
    rep = rna.match_genes(sub, tok)
    assert rep.empty_cells == [sub.obs_names[2]]
    assert 0 < rep.fraction_counts_covered < 1


def test_match_genes_ensembl_ids_duplicates_and_symbols_column():
    tok = rna.GeneTokenizer.from_genes(["CD3D", "CD3E", "LYZ", "MALAT1"])
    X = sp.csr_matrix(np.array([[1, 2, 3, 4, 5, 6]], dtype=np.float32))
    adata = ad.AnnData(X)
    # CD3D, CD3E (versioned id), LYZ, MALAT1 (not protein-coding), unknown id, CD3D again
    adata.var_names = ["ENSG00000167286", "ENSG00000198851.10", "LYZ", "MALAT1",
                       "ENSG99999999999", "CD3D"]
    rep = rna.match_genes(adata, tok)
    assert rep.n_ensembl_mapped == 2
    assert rep.matched == ["ENSG00000167286", "ENSG00000198851.10", "LYZ"]
    assert rep.not_protein_coding == ["MALAT1"]
    assert rep.unmatched == ["ENSG99999999999"]
    assert rep.duplicated == ["CD3D"]
    assert rep.column_token_ids.tolist() == [5, 6, 7, -1, -1, -1]
    assert rep.fraction_counts_covered == pytest.approx(6 / 21)
    assert rna.match_genes(adata, tok, limit_genes=None).not_protein_coding == []
    enc = rna.encode_cells(adata, tok)
    assert enc.genes[0, :5].tolist() == [CLS_ID, 5, 6, 7, SEP_ID]
    # symbols in a var column
    adata.var["symbol"] = ["CD3D", "CD3E", "LYZ", "MALAT1", "X", "Y"]
    adata.var_names = [f"g{i}" for i in range(6)]
    assert rna.match_genes(adata, tok, gene_symbols="symbol").n_matched == 3
    with pytest.raises(InputError, match="not a column"):
        rna.match_genes(adata, tok, gene_symbols="nope")


def test_no_match_explains_mouse_genes():
    tok = rna.GeneTokenizer.from_genes(["CD3E", "LYZ"])
    adata = ad.AnnData(sp.csr_matrix(np.ones((2, 2), dtype=np.float32)))
    adata.var_names = ["Cd3e", "Lyz"]
    with pytest.raises(GeneMatchError, match="ignoring case"):
        rna.match_genes(adata, tok, ignore_case=False)


def test_tokenizer_save_load_and_vocab_txt(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    back = rna.GeneTokenizer.from_pretrained(tmp_path)
    assert back.genes == tok.genes and back.vocab_size == tok.vocab_size
    assert sorted(back.fields) == ["expressions", "genes"]
    # older checkpoints: vocab.txt only
    d = tmp_path / "old" / "tokenizers" / "genes"
    d.mkdir(parents=True)
    words = ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "A1BG", "CD3E"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    (d / "tokenizer_config.json").write_text(
        '{"added_tokens_decoder": {"7": {"content": "[S]", "special": true},'
        ' "8": {"content": "[T]", "special": true}}}')
    old = rna.GeneTokenizer.from_pretrained(tmp_path / "old")
    assert old.gene_ids(["CD3E", "cd3e"]).tolist() == [6, -1]
    assert old.vocab_size == 9 and old.token_id("[T]") == 8 and "[S]" not in old
    with pytest.raises(InputError, match="no tokenizer"):
        rna.GeneTokenizer.from_pretrained(tmp_path / "missing_dir_is_empty")


def test_backed_anndata_streams_the_same(tmp_path, pbmc, tok):
    path = tmp_path / "p.h5ad"
    pbmc[:50].copy().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    rep_b = rna.match_genes(backed, tok, chunk_size=7)
    rep_m = rna.match_genes(pbmc[:50], tok)
    assert rep_b.fraction_counts_covered == pytest.approx(rep_m.fraction_counts_covered)
    enc_b = rna.encode_cells(backed, tok)
    enc_m = rna.encode_cells(pbmc[:50], tok)
    np.testing.assert_array_equal(enc_b.genes, enc_m.genes)
    backed.file.close()


def test_report_html_and_dict(pbmc, tok):
    rep = rna.match_genes(pbmc, tok)
    html = rep._repr_html_()
    assert "Gene match report" in html and f"{rep.n_matched:,}" in html
    d = rep.to_dict()
    assert d["n_matched"] == rep.n_matched and d["n_genes"] == pbmc.n_vars
    assert isinstance(pd.Series(d["unmatched"]), pd.Series)


@pytest.mark.parametrize("order", ["official", "random", "rank"])
def test_compiled_and_numpy_engines_agree(pbmc, tok, order):
    from biomed_toolkit.rna.tokenize import encode_csr

    rep = rna.match_genes(pbmc, tok, log_summary=False, compute_coverage=False)
    X = pbmc.X.copy()
    X.data[::5] += 0.25  # non-integer values take the non-memoised branch
    for pad in ("longest", "max_length"):
        a = encode_csr(X, rep.column_token_ids, max_length=96, order=order, seed=2, cell_offset=11,
                       padding=pad, engine="numba")
        b = encode_csr(X, rep.column_token_ids, max_length=96, order=order, seed=2, cell_offset=11,
                       padding=pad, engine="numpy")
        for f in ("genes", "expressions", "attention_mask", "lengths", "n_expressed"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
