"""The Feast objects of lantern's feature repo: what `feast apply` reads. No I/O.

Written by `lantern features apply --data DIR` from the dataset's external sources (one view per
source); the builders are in features/repo.py.
"""

from features.packing import SourceLayout
from features.repo import (  # noqa: F401
    encoding_objects,
    feature_service,
    scores_objects,
    source_view,
    user,
    vector_objects,
)

TTL_DAYS = 90.0
OFFLINE = '.feast/offline'  # the packed offline parquet (relative paths: from this folder)

# one FeatureView per external source
demographics_view = source_view(SourceLayout.from_dict(
    {'name': 'demographics',
     'numeric': ['age', 'income_k', 'household_size', 'shoe_size'],
     'categorical': ['region', 'gender', 'device_os'],
     'sequences': []}), TTL_DAYS, OFFLINE)
engagement_view = source_view(SourceLayout.from_dict(
    {'name': 'engagement',
     'numeric': ['sessions_30d',
                 'minutes_per_session',
                 'email_open_rate',
                 'push_opt_in',
                 'support_tickets',
                 'days_since_signup'],
     'categorical': ['app_version'],
     'sequences': []}), TTL_DAYS, OFFLINE)
transactions_view = source_view(SourceLayout.from_dict(
    {'name': 'transactions',
     'numeric': [],
     'categorical': [],
     'sequences': [['category_ids', 'int'], ['amounts', 'float']]}), TTL_DAYS, OFFLINE)

# what LANTERN v1 reads: a versioned FeatureService (a model with other inputs gets a new one)
lantern_v1 = feature_service([demographics_view, engagement_view, transactions_view])

# the scorer's predictions written back, every source precomputed into one value per user, and
# every user's sources encoded by the served model version
lantern_scores_push, lantern_scores = scores_objects(OFFLINE)
lantern_v1_vector_push, lantern_v1_vector = vector_objects(OFFLINE)
lantern_v1_encoding_push, lantern_v1_encoding = encoding_objects(OFFLINE)
