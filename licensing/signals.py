"""What licensing announces to the apps built on it. Licensing imports none of them: governance and inference
connect their receivers in their ``AppConfig.ready`` (governance/receivers.py, inference/receivers.py)."""

from django.dispatch import Signal

#: A new affiliate group (``group``): governance gives it its default alert and enforcement policy.
group_created = Signal()

#: Something the group is judged by changed outside metering (``group_id``; ``urgent`` for a grant, which
#: the gateway must apply within seconds): governance evaluates the group again.
group_judgement_changed = Signal()

#: ``organisation`` is (still) domiciled in the EU (``actor`` says who recorded it): the pool drains what the
#: EU clause of the Llama 3.2 / 3.3 / 4 AUPs no longer allows it. Receivers return what they drained.
organisation_in_eu = Signal()
