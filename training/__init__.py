"""Training the drafts: the distilled draft and the feature-level draft, the corpus they learn
from, and their model cards. Apart from what serves: nothing in the serving roles imports it."""
