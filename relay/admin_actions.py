"""The admin's writes through an app's actions (<app>/actions/), so each is audited as its domain action."""

from django.contrib import admin


class ActionsAdmin(admin.ModelAdmin):
    """Saves and deletes (one object or a selection) through an app's actions, each audited.

    Subclasses name the actions: save_action(obj, actor=...), delete_action(obj, actor=...).
    """

    save_action = delete_action = None

    def save_model(self, request, obj, form, change):
        type(self).save_action(obj, actor=request.user)

    def delete_model(self, request, obj):
        type(self).delete_action(obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            type(self).delete_action(obj, actor=request.user)
