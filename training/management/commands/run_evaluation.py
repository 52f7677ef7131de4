from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from agents.registry import all_agents
from training import evaluations
from training.actions.evaluations import run_evaluation, start_evaluation
from training.models_evaluation import Evaluation, EvaluationSet


class Command(BaseCommand):
    help = ("Run an evaluation set against models now, in this process, and print the comparison table. "
            "Runs are charged to a new evaluation key of --user (default: whoever made the set).")

    def add_arguments(self, parser):
        parser.add_argument("set_id", type=int)
        parser.add_argument("--model", dest="models", action="append", required=True,
                            help="A model name or relay-<agent>; repeat to compare (routing lives on the model).")
        parser.add_argument("--user", help="Username the evaluation key belongs to (its budgets apply).")
        parser.add_argument("--agent", default="general", choices=sorted(all_agents()))
        parser.add_argument("--max-tokens", type=int, default=512)

    def handle(self, *args, set_id, models, user, agent, max_tokens, **options):
        evaluation_set = EvaluationSet.objects.filter(pk=set_id).select_related("created_by").first()
        if evaluation_set is None:
            raise CommandError(f"There is no evaluation set {set_id}.")
        person = User.objects.filter(username=user).first() if user else evaluation_set.created_by
        if person is None or not person.is_active:
            raise CommandError("Name an active user (--user) whose key and budgets the runs are charged to.")
        if person.organization_id != evaluation_set.organization_id:
            raise CommandError(f"{person.username} is not in the set's organization.")
        problems = [problem for problem in map(evaluations.target_problem, models) if problem]
        if len(set(models)) != len(models):
            problems.append("Name each model once.")
        if problems:
            raise CommandError(" ".join(problems))
        evaluation = start_evaluation(evaluation_set, actor=person, targets=models, agent=agent,
                                      max_tokens=max_tokens, enqueue=False)
        self.stdout.write(f"Evaluation {evaluation.pk}: {evaluation.total} runs of set {evaluation_set.name!r}.")
        evaluation = run_evaluation(evaluation.pk,
                                    on_progress=lambda e: self.stdout.write(f"  {e.processed}/{e.total}"))
        self.stdout.write(evaluations.comparison_table(evaluations.comparison(evaluation)))
        if evaluation.state == Evaluation.State.FAILED:
            raise CommandError(evaluation.message)
