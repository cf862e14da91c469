"""The reproduction of the paper, on top of the quantizer core (``uniq``) and the deployment
(``uniq.deploy``): run configs and their keys (``config``), the training engine (``train``,
``runs``, ``tasks``, ``data``, ``recipes``, ``distributed``, ``dynamics``), the notebooks' API
(``study``), the paper's numbers and claims (``paper``, ``claims``, ``comparable``), figures,
the papermill runner and the HTML report (``reproduce``, ``report``), and the command line
(``cli``, run as ``python -m uniq``)."""
