"""Finished runs, loaded to answer: the chatbot (chatbot.py), several adapters on one base
(adapters.py), full-weight runs (fullweights.py) and classifiers (classifier.py). Everything here
learns what was trained from the run card alone."""
