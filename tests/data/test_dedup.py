from edgedistill.data.dedup import assign_splits, groups, jaccard, near_duplicate_pairs, shingles


def test_numbers_and_case_do_not_hide_duplicates():
    a = "Where is my order NW-123456? It was due on Monday and nothing arrived."
    b = "where is my order NW-998877? it was due on monday and nothing arrived"
    c = "How do I change the billing address on my subscription?"
    assert jaccard(shingles(a), shingles(b)) == 1.0
    assert jaccard(shingles(a), shingles(c)) < 0.1
    assert near_duplicate_pairs([a, b, c]) == [(0, 1, 1.0)]


def test_light_edit_is_a_near_duplicate_but_topic_overlap_is_not():
    base = "The label printer on line 3 ran out of ribbon at 03:45 and was down for twelve minutes before restart."
    edit = "The label printer on line 3 ran out of ribbon at 03:45 and was down for fifteen minutes before restart."
    other = "The label printer on line 5 jams whenever the humidity is high; what should we check first?"
    pairs = {(i, j) for i, j, _ in near_duplicate_pairs([base, edit, other])}
    assert pairs == {(0, 1)}


def test_groups_are_transitive():
    t = ["a b c d e f g", "a b c d e f h", "b c d e f h i j", "totally unrelated words here"]
    assert jaccard(shingles(t[0]), shingles(t[2])) < 0.5  # linked only through t[1]
    g = groups(t, threshold=0.5)
    assert g[0] == g[1] == g[2] != g[3]


def test_splits_are_deterministic_proportional_and_keep_groups_together():
    texts = [f"request number {w} about topic {w}{w} with details {w * 3}" for w in
             ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
              "upsilon phi chi psi omega one two three four five six seven eight nine ten eleven twelve thirteen "
              "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()]
    ids = [f"p{i}" for i in range(len(texts))]
    dup = texts[0].replace("alpha", "ALPHA")
    s1 = assign_splits(ids + ["dup"], texts + [dup])
    s2 = assign_splits(ids + ["dup"], texts + [dup])
    assert s1 == s2
    assert s1[0] == s1[-1]
    n = len(s1)
    assert abs(s1.count("train") - 0.8 * n) <= 2 and abs(s1.count("test") - 0.1 * n) <= 2
