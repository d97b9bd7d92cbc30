"""python-analytics: predictive analytics over the two parties' joined data, inside the clean
room. Joins the publisher's segments with the advertiser's conversions on the user id,
keeps the segments with at least K joined users, trains a logistic regression predicting
conversion from segment membership (scikit-learn, lbfgs, deterministic), and prints per
segment: the training count (the contract's count column, held to min_group_size), the
segment's model coefficient (×1000) and the model's synthetic conversion rate for a member of
that segment (per mille). Inputs come in DCR_INPUTS (publisher, advertiser; contract order).
"""
import os
import sys

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

K = 50


def main():
    publisher, advertiser = os.environ["DCR_INPUTS"].split(":")
    pub = pd.read_csv(publisher, dtype={"user": str, "segment": str})
    adv = pd.read_csv(advertiser, dtype={"user": str, "converted": int})
    joined = pub.merge(adv, on="user", how="inner")
    counts = joined.groupby("segment").size()
    segments = sorted(s for s, n in counts.items() if n >= K)
    if not segments:
        sys.exit("no segment has K joined users")
    train = joined[joined.segment.isin(segments)]
    x = np.stack([(train.segment == s).to_numpy(dtype=float) for s in segments], axis=1)
    y = train.converted.to_numpy()
    model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(x, y)
    rates = model.predict_proba(np.eye(len(segments)))[:, 1]
    out = ["segment,users,coef_milli,rate_permille"]
    for i, s in enumerate(segments):
        out.append(f"{s},{counts[s]},{round(model.coef_[0][i] * 1000)},{round(rates[i] * 1000)}")
    sys.stdout.write("\n".join(out) + "\n")


main()
